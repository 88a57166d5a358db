package fakeec2

import (
	"encoding/json"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

func TestStateEndpoint(t *testing.T) {
	f := start(t, perCard(t, "trn1.32xlarge"))
	e := f.createENI(t, CardSubnetID(1), func(in *ec2.CreateNetworkInterfaceInput) { in.Ipv4PrefixCount = aws.Int32(1) })
	id := aws.ToString(e.NetworkInterfaceId)
	f.attach(t, id, 1, 2)
	_, _ = f.noRetry.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{"eni-0000000000000dead"}})

	resp, err := http.Get(f.url + "/fake/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	es, ok := st.ENI(id)
	if !ok || es.Status != "in-use" || es.Card != 1 || es.Device != 2 || es.InstanceID != f.inst || es.SubnetID != CardSubnetID(1) ||
		es.MAC != aws.ToString(e.MacAddress) || len(es.Prefixes) != 1 || es.Primary {
		t.Fatalf("ENI in state: %+v", es)
	}
	sn, _ := st.Subnet(CardSubnetID(1))
	if sn.Used != 17 || sn.Available != 4091-17 {
		t.Fatalf("subnet in state: %+v", sn)
	}
	if st.Calls["CreateNetworkInterface"]["ok"] != 1 || st.Calls["AttachNetworkInterface"]["ok"] != 1 ||
		st.Calls["DescribeNetworkInterfaces"]["InvalidNetworkInterfaceID.NotFound"] != 1 {
		t.Fatalf("calls %v", st.Calls)
	}
	checkInvariants(t, st)
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	srv, u, err := Start(Config{Faults: Faults{Latency: Duration(time.Millisecond)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.ListenIMDS(srv.DefaultInstanceID(), "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	c := NewClient(u, DefaultRegion)
	for range 20 {
		if _, err := c.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines before, %d after close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}
