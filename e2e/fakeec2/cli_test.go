package fakeec2

import (
	"encoding/json"
	"os"
	"os/exec"
	"testing"
)

// awsCLI is the Debian AWS CLI v2; the first aws on PATH may be a 1.x CLI.
const awsCLI = "/usr/bin/aws"

// TestAWSCLI checks the wire format against the AWS CLI, which is stricter than
// the SDK about element names and booleans. Skipped where the CLI is missing.
func TestAWSCLI(t *testing.T) {
	if _, err := os.Stat(awsCLI); err != nil {
		t.Skip("no AWS CLI at " + awsCLI)
	}
	f := start(t, perCard(t, "trn1.32xlarge"))
	run := func(args ...string) map[string]any {
		t.Helper()
		cmd := exec.CommandContext(ctx(t), awsCLI, append([]string{"--endpoint-url", f.url, "--output", "json", "--no-cli-pager"}, args...)...)
		cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=AKIAFAKE", "AWS_SECRET_ACCESS_KEY=fake", "AWS_DEFAULT_REGION=us-east-1",
			"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null")
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("aws %v: %v\n%s", args, err, stderr)
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("aws %v: parse %s: %v", args, out, err)
		}
		return m
	}
	it := run("ec2", "describe-instance-types", "--instance-types", "trn1.32xlarge")
	ni := it["InstanceTypes"].([]any)[0].(map[string]any)["NetworkInfo"].(map[string]any)
	if ni["MaximumNetworkCards"].(float64) != 8 || len(ni["NetworkCards"].([]any)) != 8 || ni["EfaSupported"] != true {
		t.Fatalf("CLI network info: %v", ni)
	}
	created := run("ec2", "create-network-interface", "--subnet-id", CardSubnetID(4), "--secondary-private-ip-address-count", "2",
		"--tag-specifications", "ResourceType=network-interface,Tags=[{Key=k,Value=v}]")
	eni := created["NetworkInterface"].(map[string]any)
	id := eni["NetworkInterfaceId"].(string)
	if eni["SourceDestCheck"] != true || len(eni["PrivateIpAddresses"].([]any)) != 3 {
		t.Fatalf("CLI create: %v", eni)
	}
	att := run("ec2", "attach-network-interface", "--network-interface-id", id, "--instance-id", f.inst, "--device-index", "1", "--network-card-index", "4")
	if att["NetworkCardIndex"].(float64) != 4 {
		t.Fatalf("CLI attach: %v", att)
	}
	d := run("ec2", "describe-network-interfaces", "--filters", "Name=attachment.instance-id,Values="+f.inst, "Name=tag:k,Values=v")
	list := d["NetworkInterfaces"].([]any)
	if len(list) != 1 {
		t.Fatalf("CLI describe: %v", d)
	}
	a := list[0].(map[string]any)["Attachment"].(map[string]any)
	if a["NetworkCardIndex"].(float64) != 4 || a["DeviceIndex"].(float64) != 1 || a["Status"] != "attached" || a["DeleteOnTermination"] != false {
		t.Fatalf("CLI attachment: %v", a)
	}
}
