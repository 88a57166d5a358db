package fakeec2

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// TestLag: with a visibility lag, DescribeNetworkInterfaces and IMDS show creates, attaches, assigns,
// unassigns, detaches and deletes only Lag after they happened, while the mutating calls act at once.
func TestLag(t *testing.T) {
	const lag = 400 * time.Millisecond
	t.Setenv(LagEnv, "")
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Faults.Lag = Duration(lag)
	f := start(t, cfg)
	c := imds.New(imds.Options{Endpoint: f.url})
	visible := func(id string) bool {
		_, err := f.noRetry.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
		if err == nil {
			return true
		}
		wantCode(t, err, "InvalidNetworkInterfaceID.NotFound", 400)
		return false
	}
	secondaries := func(id string) []string {
		var out []string
		for _, a := range f.describeENI(t, id).PrivateIpAddresses {
			if !aws.ToBool(a.Primary) {
				out = append(out, aws.ToString(a.PrivateIpAddress))
			}
		}
		slices.Sort(out)
		return out
	}
	// settles waits out the lag, checking first that the old view still holds.
	settles := func(what string, old, now func() bool) {
		t.Helper()
		if !old() {
			t.Errorf("%s visible at once, want after %s", what, lag)
		}
		time.Sleep(lag + 50*time.Millisecond)
		if !now() {
			t.Errorf("%s not visible %s later", what, lag)
		}
	}

	e := f.createENI(t, CardSubnetID(1))
	id := aws.ToString(e.NetworkInterfaceId)
	if at := f.srv.State().DescribedAt; !at.After(time.Now()) || at.After(time.Now().Add(lag)) {
		t.Errorf("DescribedAt %v right after a create, want within %s from now", at, lag)
	}
	settles("create", func() bool { return !visible(id) }, func() bool { return visible(id) })
	if at := f.srv.State().DescribedAt; !at.IsZero() {
		t.Errorf("DescribedAt %v once the lag passed, want zero", at)
	}

	f.attach(t, id, 1, 1)
	macs := "network/interfaces/macs/"
	inIMDS := func() bool { return strings.Contains(mustGet(t, c, macs), aws.ToString(e.MacAddress)) }
	settles("attach in IMDS", func() bool { return !inIMDS() }, inIMDS)

	out, err := f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(2)})
	if err != nil {
		t.Fatal(err)
	}
	var assigned []string
	for _, a := range out.AssignedPrivateIpAddresses {
		assigned = append(assigned, aws.ToString(a.PrivateIpAddress))
	}
	slices.Sort(assigned)
	settles("assign", func() bool { return len(secondaries(id)) == 0 },
		func() bool { return slices.Equal(secondaries(id), assigned) })

	if _, err := f.ec2.UnassignPrivateIpAddresses(ctx(t), &ec2.UnassignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(id), PrivateIpAddresses: assigned[:1]}); err != nil {
		t.Fatal(err)
	}
	// The true state changed at once: the address is free to be assigned again right away.
	if st, _ := f.srv.State().ENI(id); slices.Contains(st.SecondaryIPs, assigned[0]) {
		t.Errorf("unassigned %s still on %s in the true state", assigned[0], id)
	}
	local := func() string { return mustGet(t, c, macs+aws.ToString(e.MacAddress)+"/local-ipv4s") }
	settles("unassign", func() bool {
		return slices.Contains(secondaries(id), assigned[0]) && strings.Contains(local(), assigned[0])
	},
		func() bool {
			return slices.Equal(secondaries(id), assigned[1:]) && !strings.Contains(local(), assigned[0])
		})

	if _, err := f.ec2.DetachNetworkInterface(ctx(t), &ec2.DetachNetworkInterfaceInput{
		AttachmentId: f.describeENI(t, id).Attachment.AttachmentId}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ec2.DeleteNetworkInterface(ctx(t), &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	settles("delete", func() bool { return visible(id) && inIMDS() }, func() bool { return !visible(id) && !inIMDS() })

	// WaitDescribed returns once a change made just now is visible.
	waited := f.createENI(t, CardSubnetID(1))
	if err := f.srv.WaitDescribed(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if !visible(aws.ToString(waited.NetworkInterfaceId)) {
		t.Error("create not visible after WaitDescribed")
	}

	// Off again: no lag.
	if err := f.srv.SetFaults(Faults{}); err != nil {
		t.Fatal(err)
	}
	e2 := f.createENI(t, CardSubnetID(1))
	if !visible(aws.ToString(e2.NetworkInterfaceId)) {
		t.Error("create not visible at once without a lag")
	}
}

// TestLagEnv: LagEnv gives every fake without its own lag one; a bad value is an error.
func TestLagEnv(t *testing.T) {
	t.Setenv(LagEnv, "250ms")
	srv, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.faults.lag(); got != 250*time.Millisecond {
		t.Errorf("lag %s, want 250ms from %s", got, LagEnv)
	}
	t.Setenv(LagEnv, "soon")
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), LagEnv) {
		t.Errorf("New with %s=soon: %v, want an error naming it", LagEnv, err)
	}
}
