package fakeec2

import (
	"encoding/json"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
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

// TestTerminate: terminating an instance detaches every ENI of it; those whose attachment has
// DeleteOnTermination are deleted (their addresses back in the subnet), the others stay available with their
// addresses and tags. Another instance's ENIs are untouched.
func TestTerminate(t *testing.T) {
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Instances = append(cfg.Instances, InstanceConfig{ID: "i-0fedcba987654321f", Type: "trn1.32xlarge"})
	f := start(t, cfg)
	tags := func(in *ec2.CreateNetworkInterfaceInput) {
		in.SecondaryPrivateIpAddressCount = aws.Int32(3)
		in.TagSpecifications = []types.TagSpecification{{ResourceType: types.ResourceTypeNetworkInterface,
			Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}}}
	}
	kept := aws.ToString(f.createENI(t, CardSubnetID(1), tags).NetworkInterfaceId)
	f.attach(t, kept, 1, 1)
	gone := aws.ToString(f.createENI(t, CardSubnetID(2), tags).NetworkInterfaceId)
	att := f.attach(t, gone, 2, 1)
	if _, err := f.noRetry.ModifyNetworkInterfaceAttribute(ctx(t), &ec2.ModifyNetworkInterfaceAttributeInput{NetworkInterfaceId: aws.String(gone),
		Attachment: &types.NetworkInterfaceAttachmentChanges{AttachmentId: aws.String(att), DeleteOnTermination: aws.Bool(true)}}); err != nil {
		t.Fatal(err)
	}
	other := aws.ToString(f.createENI(t, CardSubnetID(1)).NetworkInterfaceId)
	if _, err := f.noRetry.AttachNetworkInterface(ctx(t), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(other),
		InstanceId: aws.String("i-0fedcba987654321f"), DeviceIndex: aws.Int32(1), NetworkCardIndex: aws.Int32(1)}); err != nil {
		t.Fatal(err)
	}
	before := f.srv.State()
	primary := before.Instances[0].PrimaryENI
	snBefore, _ := before.Subnet(CardSubnetID(2))

	if err := f.srv.Terminate(f.inst); err != nil {
		t.Fatal(err)
	}
	st := f.srv.State()
	for _, id := range []string{gone, primary} {
		if _, ok := st.ENI(id); ok {
			t.Errorf("ENI %s with DeleteOnTermination still there", id)
		}
	}
	if e, ok := st.ENI(kept); !ok || e.Status != "available" || len(e.SecondaryIPs) != 3 || e.Tags["k"] != "v" {
		t.Errorf("ENI without DeleteOnTermination after the termination: %+v (found %v), want available with its 3 addresses and tags", e, ok)
	}
	if e, ok := st.ENI(other); !ok || e.Status != "in-use" {
		t.Errorf("the other instance's ENI: %+v (found %v)", e, ok)
	}
	if sn, _ := st.Subnet(CardSubnetID(2)); sn.Used != snBefore.Used-4 {
		t.Errorf("subnet of the deleted ENI uses %d addresses, want %d", sn.Used, snBefore.Used-4)
	}
	checkInvariants(t, st)
	if err := f.srv.Terminate("i-00000000000000bad"); err == nil || !strings.Contains(err.Error(), "InvalidInstanceID.NotFound") {
		t.Errorf("terminate an unknown instance: %v, want InvalidInstanceID.NotFound", err)
	}
}
