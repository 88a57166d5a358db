package fakeec2

import (
	"encoding/xml"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// TestErrorCodes provokes every error the fake knows and reads it back through the SDK.
func TestErrorCodes(t *testing.T) {
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Subnets = append(cfg.Subnets,
		SubnetConfig{ID: "subnet-0tiny0000000000", CIDR: "10.0.200.0/28"},
		SubnetConfig{ID: "subnet-0otheraz000000", CIDR: "10.0.201.0/24", AZ: "us-east-1b"})
	cfg.Instances = append(cfg.Instances, InstanceConfig{ID: "i-0m5large00000000", Type: "m5.large"})
	cfg.Faults.Deny = []string{"CreateTags"}
	f := start(t, cfg)
	c := f.noRetry
	primary := f.srv.State().Instances[0].PrimaryENI
	primaryAtt, _ := f.srv.State().ENI(primary)

	spare := aws.ToString(f.createENI(t, CardSubnetID(1)).NetworkInterfaceId)
	used := aws.ToString(f.createENI(t, CardSubnetID(1)).NetworkInterfaceId)
	f.attach(t, used, 1, 1)
	otherAZ := aws.ToString(f.createENI(t, "subnet-0otheraz000000").NetworkInterfaceId)
	// m5.large: 3 ENIs on its one card (primary + 2), 10 addresses per ENI.
	m5 := &fixture{srv: f.srv, ec2: f.ec2, noRetry: f.noRetry, inst: "i-0m5large00000000"}
	m5a := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId)
	m5b := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId)
	m5c := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId)
	m5.attach(t, m5a, 0, 1)
	m5.attach(t, m5b, 0, 2)
	if _, err := f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(m5a), SecondaryPrivateIpAddressCount: aws.Int32(9)}); err != nil {
		t.Fatal(err)
	}

	attach := func(eni, inst string, card, dev int32) error {
		_, err := c.AttachNetworkInterface(ctx(t), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(eni),
			InstanceId: aws.String(inst), DeviceIndex: aws.Int32(dev), NetworkCardIndex: aws.Int32(card)})
		return err
	}
	assign := func(eni string, n int32) error {
		_, err := c.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eni), SecondaryPrivateIpAddressCount: aws.Int32(n)})
		return err
	}
	tests := []struct {
		name   string
		call   func() error
		code   string
		status int
		msg    string // substring of the message, when it matters
	}{
		{"describe missing ENI", func() error {
			_, err := c.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{"eni-0000000000000dead"}})
			return err
		}, "InvalidNetworkInterfaceID.NotFound", 400, "The networkInterface ID 'eni-0000000000000dead' does not exist"},
		{"assign to missing ENI", func() error { return assign("eni-0000000000000dead", 1) }, "InvalidNetworkInterfaceID.NotFound", 400, ""},
		{"delete missing ENI", func() error {
			_, err := c.DeleteNetworkInterface(ctx(t), &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String("eni-0000000000000dead")})
			return err
		}, "InvalidNetworkInterfaceID.NotFound", 400, ""},
		{"detach missing attachment", func() error {
			_, err := c.DetachNetworkInterface(ctx(t), &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String("eni-attach-00000000000dead")})
			return err
		}, "InvalidAttachmentID.NotFound", 400, ""},
		{"detach primary", func() error {
			_, err := c.DetachNetworkInterface(ctx(t), &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(primaryAtt.AttachmentID)})
			return err
		}, "OperationNotPermitted", 400, "device index 0 and networkCard index 0"},
		{"device index in use on card", func() error { return attach(spare, f.inst, 1, 1) }, "InvalidParameterValue", 400, "already has an interface attached at device index '1'"},
		{"device 0 on card 0 is the primary", func() error { return attach(spare, f.inst, 0, 0) }, "InvalidParameterValue", 400, "device index '0'"},
		{"attach an attached ENI", func() error { return attach(used, f.inst, 2, 1) }, "InvalidParameterValue", 400, "is currently in use"},
		{"card index out of range", func() error { return attach(spare, f.inst, 8, 1) }, "InvalidParameterValue", 400, "Network card index 8"},
		{"subnet in another AZ", func() error { return attach(otherAZ, f.inst, 1, 2) }, "InvalidParameterValue", 400, "availability zone"},
		{"delete attached ENI", func() error {
			_, err := c.DeleteNetworkInterface(ctx(t), &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(used)})
			return err
		}, "InvalidParameterValue", 400, "is currently in use"},
		{"too many ENIs on card", func() error { return m5attach(c, t, m5c) }, "AttachmentLimitExceeded", 400, ""},
		{"too many addresses on ENI", func() error { return assign(m5a, 1) }, "PrivateIpAddressLimitExceeded", 400, "Number of private addresses will exceed limit."},
		{"too many addresses at create", func() error {
			_, err := c.CreateNetworkInterface(ctx(t), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(CardSubnetID(1)), SecondaryPrivateIpAddressCount: aws.Int32(50)})
			return err
		}, "PrivateIpAddressLimitExceeded", 400, ""},
		{"subnet exhausted", func() error {
			_, err := c.CreateNetworkInterface(ctx(t), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String("subnet-0tiny0000000000"), SecondaryPrivateIpAddressCount: aws.Int32(11)})
			return err
		}, "InsufficientFreeAddressesInSubnet", 400, ""},
		{"no /28 left", func() error {
			_, err := c.CreateNetworkInterface(ctx(t), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String("subnet-0tiny0000000000"), Ipv4PrefixCount: aws.Int32(1)})
			return err
		}, "InsufficientCidrBlocks", 400, ""},
		{"create in missing subnet", func() error {
			_, err := c.CreateNetworkInterface(ctx(t), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String("subnet-0000000000dead")})
			return err
		}, "InvalidSubnetID.NotFound", 400, ""},
		{"describe missing subnet", func() error {
			_, err := c.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{SubnetIds: []string{"subnet-0000000000dead"}})
			return err
		}, "InvalidSubnetID.NotFound", 400, ""},
		{"attach to missing instance", func() error { return attach(spare, "i-00000000000000dead", 1, 2) }, "InvalidInstanceID.NotFound", 400, ""},
		{"describe missing instance", func() error {
			_, err := c.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{"i-00000000000000dead"}})
			return err
		}, "InvalidInstanceID.NotFound", 400, ""},
		{"unknown instance type", func() error {
			_, err := c.DescribeInstanceTypes(ctx(t), &ec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{"t2.nano"}})
			return err
		}, "InvalidInstanceType", 400, ""},
		{"assign nothing", func() error {
			_, err := c.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(spare)})
			return err
		}, "MissingParameter", 400, ""},
		{"unassign primary", func() error {
			_, err := c.UnassignPrivateIpAddresses(ctx(t), &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(used), PrivateIpAddresses: []string{primaryAtt.PrimaryIP}})
			return err
		}, "InvalidParameterValue", 400, ""},
		{"address outside subnet", func() error {
			_, err := c.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(spare), PrivateIpAddresses: []string{"192.168.1.1"}})
			return err
		}, "InvalidParameterValue", 400, ""},
		{"denied action", func() error {
			_, err := c.CreateTags(ctx(t), &ec2.CreateTagsInput{Resources: []string{spare}, Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}})
			return err
		}, "UnauthorizedOperation", 403, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			wantCode(t, err, tc.code, tc.status)
			if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("message %q lacks %q", err.Error(), tc.msg)
			}
		})
	}
	// Failed calls changed nothing.
	if e, _ := f.srv.State().ENI(spare); e.Status != "available" {
		t.Fatalf("spare ENI is %s after failed attaches", e.Status)
	}
	if sn, _ := f.srv.State().Subnet("subnet-0tiny0000000000"); sn.Used != 0 {
		t.Fatalf("failed creates leaked %d addresses in the tiny subnet", sn.Used)
	}
	checkInvariants(t, f.srv.State())
	calls := f.srv.State().Calls
	if calls["AttachNetworkInterface"]["AttachmentLimitExceeded"] != 1 || calls["CreateTags"]["UnauthorizedOperation"] != 1 {
		t.Fatalf("call counters: %v", calls)
	}
}

func m5attach(c *ec2.Client, t *testing.T, eni string) error {
	_, err := c.AttachNetworkInterface(ctx(t), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(eni),
		InstanceId: aws.String("i-0m5large00000000"), DeviceIndex: aws.Int32(3), NetworkCardIndex: aws.Int32(0)})
	return err
}

// TestRawProtocolErrors covers what the SDK never sends: no credentials, unknown actions, missing parameters.
func TestRawProtocolErrors(t *testing.T) {
	f := start(t, Config{})
	tests := []struct {
		name   string
		form   url.Values
		auth   bool
		code   string
		status int
	}{
		{"no authorization", url.Values{"Action": {"DescribeSubnets"}, "Version": {"2016-11-15"}}, false, "AuthFailure", 403},
		{"unknown action", url.Values{"Action": {"LaunchRockets"}, "Version": {"2016-11-15"}}, true, "InvalidAction", 400},
		{"missing subnet", url.Values{"Action": {"CreateNetworkInterface"}, "Version": {"2016-11-15"}}, true, "MissingParameter", 400},
		{"missing device index", url.Values{"Action": {"AttachNetworkInterface"}, "NetworkInterfaceId": {"eni-1"}, "InstanceId": {"i-1"}}, true, "MissingParameter", 400},
		{"bad boolean", url.Values{"Action": {"DetachNetworkInterface"}, "AttachmentId": {"eni-attach-1"}, "Force": {"True"}}, true, "InvalidParameterValue", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctx(t), http.MethodPost, f.url+"/", strings.NewReader(tc.form.Encode()))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tc.auth {
				req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=fake")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			var env struct {
				Errors []struct {
					Code    string `xml:"Code"`
					Message string `xml:"Message"`
				} `xml:"Errors>Error"`
				RequestID string `xml:"RequestID"`
			}
			if err := xml.Unmarshal(body, &env); err != nil {
				t.Fatalf("parse %s: %v", body, err)
			}
			if resp.StatusCode != tc.status || len(env.Errors) != 1 || env.Errors[0].Code != tc.code || env.RequestID == "" {
				t.Fatalf("status %d body %s, want %d %s", resp.StatusCode, body, tc.status, tc.code)
			}
		})
	}
}
