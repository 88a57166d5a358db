package fakeec2

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

func imdsGet(t *testing.T, c *imds.Client, path string) (string, int) {
	t.Helper()
	out, err := c.GetMetadata(ctx(t), &imds.GetMetadataInput{Path: path})
	if err != nil {
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) {
			return "", re.HTTPStatusCode()
		}
		t.Fatalf("get %s: %v", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), 200
}

func mustGet(t *testing.T, c *imds.Client, path string) string {
	t.Helper()
	v, status := imdsGet(t, c, path)
	if status != 200 {
		t.Fatalf("get %s: status %d", path, status)
	}
	return v
}

func TestIMDS(t *testing.T) {
	f := start(t, perCard(t, "trn1.32xlarge"))
	c := imds.New(imds.Options{Endpoint: f.url})
	if got := mustGet(t, c, "instance-id"); got != f.inst {
		t.Fatalf("instance-id %q", got)
	}
	if got := mustGet(t, c, "instance-type"); got != "trn1.32xlarge" {
		t.Fatalf("instance-type %q", got)
	}
	if got := mustGet(t, c, "placement/availability-zone"); got != DefaultAZ {
		t.Fatalf("az %q", got)
	}
	st := f.srv.State()
	prim, _ := st.ENI(st.Instances[0].PrimaryENI)
	if got := mustGet(t, c, "mac"); got != prim.MAC {
		t.Fatalf("mac %q, want %q", got, prim.MAC)
	}
	if got := mustGet(t, c, "local-ipv4"); got != prim.PrimaryIP {
		t.Fatalf("local-ipv4 %q", got)
	}
	// Card 0 has no network-card key on real EC2.
	if _, status := imdsGet(t, c, "network/interfaces/macs/"+prim.MAC+"/network-card"); status != 404 {
		t.Fatalf("card 0 network-card: status %d, want 404", status)
	}
	if got := mustGet(t, c, "network/interfaces/macs/"+prim.MAC+"/device-number"); got != "0" {
		t.Fatalf("primary device-number %q", got)
	}

	// An ENI on card 3 with two secondaries and a prefix.
	e := f.createENI(t, CardSubnetID(3))
	id := aws.ToString(e.NetworkInterfaceId)
	mac := aws.ToString(e.MacAddress)
	macDir := "network/interfaces/macs/" + mac + "/"
	if _, status := imdsGet(t, c, macDir+"interface-id"); status != 404 {
		t.Fatalf("unattached ENI visible in IMDS: %d", status)
	}
	f.attach(t, id, 3, 1)
	out, err := f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(2)})
	if err != nil {
		t.Fatal(err)
	}
	pout, err := f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), Ipv4PrefixCount: aws.Int32(1)})
	if err != nil {
		t.Fatal(err)
	}
	macs := mustGet(t, c, "network/interfaces/macs/")
	if !strings.Contains(macs, mac+"/") || !strings.Contains(macs, prim.MAC+"/") || len(strings.Split(macs, "\n")) != 2 {
		t.Fatalf("macs listing %q", macs)
	}
	want := map[string]string{
		"network-card":           "3",
		"device-number":          "1",
		"interface-id":           id,
		"subnet-id":              CardSubnetID(3),
		"subnet-ipv4-cidr-block": "10.0.48.0/20",
		"vpc-ipv4-cidr-blocks":   DefaultVPCCIDR,
		"local-ipv4s":            strings.Join(append([]string{aws.ToString(e.PrivateIpAddress)}, addrs(out.AssignedPrivateIpAddresses)...), "\n"),
		"ipv4-prefix":            aws.ToString(pout.AssignedIpv4Prefixes[0].Ipv4Prefix),
		"security-group-ids":     f.srv.Config().SecurityGroupID,
	}
	for k, v := range want {
		if got := mustGet(t, c, macDir+k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if _, status := imdsGet(t, c, "network/interfaces/macs/"+prim.MAC+"/ipv4-prefix"); status != 404 {
		t.Fatalf("ipv4-prefix without prefixes: status %d, want 404", status)
	}
	listing := mustGet(t, c, macDir)
	if !strings.Contains(listing, "local-ipv4s") || !strings.Contains(listing, "network-card") {
		t.Fatalf("mac dir listing %q", listing)
	}

	// Detach: the MAC disappears from the listing.
	att, _ := f.srv.State().ENI(id)
	if _, err := f.ec2.DetachNetworkInterface(ctx(t), &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(att.AttachmentID)}); err != nil {
		t.Fatal(err)
	}
	if macs := mustGet(t, c, "network/interfaces/macs/"); strings.Contains(macs, mac) {
		t.Fatalf("detached MAC still listed: %q", macs)
	}

	doc, err := c.GetInstanceIdentityDocument(ctx(t), &imds.GetInstanceIdentityDocumentInput{})
	if err != nil || doc.Region != DefaultRegion || doc.InstanceID != f.inst {
		t.Fatalf("identity document: %v %+v", err, doc)
	}
	// The SDK used IMDSv2: it fetched a token, and no GET was refused.
	calls := f.srv.State().Calls
	if calls["IMDS.PutToken"]["ok"] < 1 || calls["IMDS.Get"]["401"] != 0 {
		t.Fatalf("IMDS counters %v", calls)
	}
}

func TestIMDSv2Only(t *testing.T) {
	f := start(t, Config{})
	do := func(method, path string, hdr map[string]string) (*http.Response, string) {
		req, err := http.NewRequestWithContext(ctx(t), method, f.url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, _ := do("GET", "/latest/meta-data/instance-id", nil); resp.StatusCode != 401 {
		t.Fatalf("IMDSv1 GET: %d, want 401", resp.StatusCode)
	}
	if resp, _ := do("GET", "/latest/meta-data/instance-id", map[string]string{imdsTokenHeader: "forged"}); resp.StatusCode != 401 {
		t.Fatalf("forged token: %d, want 401", resp.StatusCode)
	}
	for _, ttl := range []string{"", "0", "21601", "x"} {
		if resp, _ := do("PUT", "/latest/api/token", map[string]string{imdsTTLHeader: ttl}); resp.StatusCode != 400 {
			t.Fatalf("token with ttl %q: %d, want 400", ttl, resp.StatusCode)
		}
	}
	resp, tok := do("PUT", "/latest/api/token", map[string]string{imdsTTLHeader: "60"})
	if resp.StatusCode != 200 || tok == "" || resp.Header.Get(imdsTTLHeader) != "60" {
		t.Fatalf("token: %d %q ttl header %q", resp.StatusCode, tok, resp.Header.Get(imdsTTLHeader))
	}
	resp, body := do("GET", "/latest/meta-data/instance-id", map[string]string{imdsTokenHeader: tok})
	if resp.StatusCode != 200 || body != f.inst {
		t.Fatalf("GET with token: %d %q", resp.StatusCode, body)
	}
	resp, body = do("GET", "/latest/meta-data/", map[string]string{imdsTokenHeader: tok})
	if resp.StatusCode != 200 || !strings.Contains(body, "network/") || !strings.Contains(body, "instance-id") {
		t.Fatalf("meta-data listing: %d %q", resp.StatusCode, body)
	}
}

func TestIMDSPerInstance(t *testing.T) {
	cfg := Config{Instances: []InstanceConfig{{ID: "i-0node1000000000000"}, {ID: "i-0node2000000000000", Type: "p4d.24xlarge"}}}
	f := start(t, cfg)
	u, err := f.srv.ListenIMDS("i-0node2000000000000", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := imds.New(imds.Options{Endpoint: u})
	if got := mustGet(t, c, "instance-id"); got != "i-0node2000000000000" {
		t.Fatalf("node 2 IMDS says %q", got)
	}
	if got := mustGet(t, c, "instance-type"); got != "p4d.24xlarge" {
		t.Fatalf("node 2 type %q", got)
	}
	// A token from one instance's IMDS is no good on another's.
	c1 := imds.New(imds.Options{Endpoint: f.url})
	if got := mustGet(t, c1, "instance-id"); got != "i-0node1000000000000" {
		t.Fatalf("node 1 IMDS says %q", got)
	}
	if _, err := f.srv.IMDSHandler("i-0nope"); err == nil {
		t.Fatal("IMDS handler for unknown instance")
	}
}
