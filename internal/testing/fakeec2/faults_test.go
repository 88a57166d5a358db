package fakeec2

import (
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

func TestThrottleGivenRates(t *testing.T) {
	cfg := Config{Faults: Faults{Rates: map[string]Rate{ClassMutate: {Burst: 3, PerSecond: 4}}}}
	f := start(t, cfg)
	id := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId) // takes 1 token
	assign := func(c *ec2.Client) error {
		_, err := c.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(1)})
		return err
	}
	ok, throttled := 0, 0
	for range 10 {
		err := assign(f.noRetry)
		if err == nil {
			ok++
			continue
		}
		wantCode(t, err, "RequestLimitExceeded", 503)
		throttled++
	}
	if ok < 2 || ok > 4 || throttled == 0 {
		t.Fatalf("burst of 10 with 2 tokens left: %d ok, %d throttled", ok, throttled)
	}
	// Other classes are not throttled.
	for range 20 {
		if _, err := f.noRetry.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{}); err != nil {
			t.Fatalf("describe throttled: %v", err)
		}
	}
	// The SDK's standard retryer backs off and gets through.
	retrying := f.srv.Client(func(o *ec2.Options) {
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = 20
			so.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 100 * time.Millisecond, nil })
		})
	})
	before := f.srv.State().Calls["AssignPrivateIpAddresses"]["RequestLimitExceeded"]
	for i := range 6 {
		if err := assign(retrying); err != nil {
			t.Fatalf("call %d with retries: %v", i, err)
		}
	}
	if after := f.srv.State().Calls["AssignPrivateIpAddresses"]["RequestLimitExceeded"]; after == before {
		t.Fatal("retrying client was never throttled: the test proves nothing")
	}
	if e, _ := f.srv.State().ENI(id); len(e.SecondaryIPs) != ok+6 {
		t.Fatalf("%d addresses, want %d (throttled calls must not change state)", len(e.SecondaryIPs), ok+6)
	}
}

func TestThrottlePublishedRates(t *testing.T) {
	f := start(t, Config{Faults: Faults{Throttle: true}})
	// Unfiltered DescribeNetworkInterfaces: 50 burst, 10/s.
	ok, throttled := 0, 0
	for range 70 {
		_, err := f.noRetry.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{})
		if err != nil {
			wantCode(t, err, "RequestLimitExceeded", 503)
			throttled++
			continue
		}
		ok++
	}
	if ok < 50 || ok > 60 || throttled == 0 {
		t.Fatalf("%d ok, %d throttled; want about 50 ok", ok, throttled)
	}
	// Filtered describes use their own 100-token bucket.
	if _, err := f.noRetry.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{f.srv.State().Instances[0].PrimaryENI}}); err != nil {
		t.Fatalf("filtered describe: %v", err)
	}
	// Turning faults off at run time works.
	if err := f.srv.SetFaults(Faults{}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := f.noRetry.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{}); err != nil {
			t.Fatalf("after SetFaults: %v", err)
		}
	}
}

func TestInjectedErrorsDeterministic(t *testing.T) {
	run := func() []string {
		cfg := Config{Seed: 42, Faults: Faults{Errors: map[string]ErrorFault{"DescribeSubnets": {Rate: 0.5, Code: "InternalError"}}}}
		f := start(t, cfg)
		var results []string
		for range 30 {
			_, err := f.noRetry.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{})
			if err != nil {
				code, status := apiErr(t, err)
				if code != "InternalError" || status != 500 {
					t.Fatalf("injected %s %d", code, status)
				}
				results = append(results, "E")
				continue
			}
			results = append(results, ".")
		}
		// Other actions are untouched.
		if _, err := f.noRetry.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{}); err != nil {
			t.Fatal(err)
		}
		calls := f.srv.State().Calls["DescribeSubnets"]
		if calls["ok"]+calls["InternalError"] != 30 || calls["ok"] == 0 || calls["InternalError"] == 0 {
			t.Fatalf("counters %v", calls)
		}
		return results
	}
	a, b := run(), run()
	if len(a) != len(b) {
		t.Fatal("length differs")
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different results:\n%v\n%v", a, b)
		}
	}
}

func TestLatency(t *testing.T) {
	cfg := Config{Faults: Faults{ActionLatency: map[string]Duration{"DescribeSubnets": Duration(150 * time.Millisecond), "DescribeInstances": Duration(time.Minute)}}}
	srv, u, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(u, DefaultRegion, func(o *ec2.Options) { o.Retryer = aws.NopRetryer{} })
	t0 := time.Now()
	if _, err := c.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d < 150*time.Millisecond {
		t.Fatalf("DescribeSubnets took %v, want >= 150ms", d)
	}
	// Close does not wait for a pending one-minute sleep.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = c.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{})
	}()
	time.Sleep(50 * time.Millisecond)
	t0 = time.Now()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("close with a pending slow call took %v", d)
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"unknown type", Config{Instances: []InstanceConfig{{Type: "t9.giant"}}}},
		{"subnet outside vpc", Config{Subnets: []SubnetConfig{{CIDR: "192.168.0.0/24"}}}},
		{"overlapping subnets", Config{Subnets: []SubnetConfig{{CIDR: "10.0.0.0/20"}, {CIDR: "10.0.8.0/24"}}}},
		{"subnet too small", Config{Subnets: []SubnetConfig{{CIDR: "10.0.0.0/29"}}}},
		{"unknown instance subnet", Config{Instances: []InstanceConfig{{SubnetID: "subnet-nope"}}}},
		{"instance subnet in other AZ", Config{Subnets: []SubnetConfig{{CIDR: "10.0.0.0/24", AZ: "us-east-1b"}}}},
		{"bad rate", Config{Faults: Faults{Rates: map[string]Rate{ClassMutate: {Burst: 0, PerSecond: 1}}}}},
		{"bad error rate", Config{Faults: Faults{Errors: map[string]ErrorFault{"*": {Rate: 2, Code: "InternalError"}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	if _, err := New(Config{}); err != nil {
		t.Fatalf("default config: %v", err)
	}
	if _, err := SubnetsPerCard(33); err == nil {
		t.Fatal("SubnetsPerCard(33) accepted")
	}
	s32, err := SubnetsPerCard(32)
	if err != nil || len(s32) != 32 || s32[31].CIDR != "10.0.248.0/21" {
		t.Fatalf("SubnetsPerCard(32): %v %v", err, s32)
	}
	if _, err := New(Config{Subnets: s32, Instances: []InstanceConfig{{Type: "p5.48xlarge"}}}); err != nil {
		t.Fatalf("p5 with 32 subnets: %v", err)
	}
}

func TestLoadConfig(t *testing.T) {
	cfg, err := LoadConfig("testdata/config.json")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Region != "us-west-2" || len(cfg.Instances) != 2 || cfg.Instances[1].Type != "p5en.48xlarge" ||
		time.Duration(cfg.Faults.Latency) != 20*time.Millisecond || cfg.Faults.Rates[ClassAttach].Burst != 10 {
		t.Fatalf("loaded %+v", cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.State().Instances[1].ID; got != "i-0p5en000000000001" {
		t.Fatalf("instance %s", got)
	}
	if _, err := LoadConfig("testdata/bad-config.json"); err == nil {
		t.Fatal("unknown key accepted")
	}
}

// TestThrottleAccountWide: EC2's buckets are per account and region, so the calls made for every instance of
// the fake draw on the same buckets (issue 13's 100-node scale-up depends on it): two instances' ENIs, real
// SDK client, no retries, buckets that do not refill during the test.
func TestThrottleAccountWide(t *testing.T) {
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Instances = append(cfg.Instances, InstanceConfig{ID: "i-0fedcba9876543210", Type: "trn1.32xlarge"})
	cfg.Faults = Faults{Rates: map[string]Rate{ClassMutate: {Burst: 6, PerSecond: 0.001}, ClassAttach: {Burst: 2, PerSecond: 0.001}}}
	f := start(t, cfg)
	insts := []string{cfg.Instances[0].ID, cfg.Instances[1].ID}
	enis := make([]string, 2)
	for i, inst := range insts { // 2 mutating tokens, 2 attach tokens: one each per instance
		enis[i] = aws.ToString(f.createENI(t, CardSubnetID(1)).NetworkInterfaceId)
		if _, err := f.noRetry.AttachNetworkInterface(ctx(t), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(enis[i]),
			InstanceId: aws.String(inst), DeviceIndex: aws.Int32(1), NetworkCardIndex: aws.Int32(1)}); err != nil {
			t.Fatalf("attach %s to %s: %v", enis[i], inst, err)
		}
	}
	assign := func(eni string) error {
		_, err := f.noRetry.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eni), SecondaryPrivateIpAddressCount: aws.Int32(1)})
		return err
	}
	for i := range 4 { // the 4 mutating tokens left, alternating instances
		if err := assign(enis[i%2]); err != nil {
			t.Fatalf("assign %d on %s: %v", i, insts[i%2], err)
		}
	}
	for i, eni := range enis { // empty for both instances alike
		wantCode(t, assign(eni), "RequestLimitExceeded", 503)
		_, err := f.noRetry.DetachNetworkInterface(ctx(t), &ec2.DetachNetworkInterfaceInput{AttachmentId: f.describeENI(t, eni).Attachment.AttachmentId})
		if err == nil {
			t.Fatalf("detach on %s after both instances' attaches took the attach bucket: not throttled", insts[i])
		}
		wantCode(t, err, "RequestLimitExceeded", 503)
	}
}

// TestThrottlePublishedAccountWide: with Throttle on, the mutating calls for two instances' ENIs, taking
// turns, get EC2's 100-token account bucket between them (per instance, they would get 200).
func TestThrottlePublishedAccountWide(t *testing.T) {
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Instances = append(cfg.Instances, InstanceConfig{ID: "i-0fedcba9876543210", Type: "trn1.32xlarge"})
	cfg.Faults = Faults{Throttle: true}
	f := start(t, cfg)
	if r := PublishedRates[ClassMutate]; r != (Rate{Burst: 100, PerSecond: 5}) {
		t.Fatalf("mutating bucket %+v, EC2's is 100 burst, 5/s", r)
	}
	start := time.Now()
	var enis []string
	for i, inst := range []string{cfg.Instances[0].ID, cfg.Instances[1].ID} {
		enis = append(enis, aws.ToString(f.createENI(t, CardSubnetID(1)).NetworkInterfaceId))
		if _, err := f.noRetry.AttachNetworkInterface(ctx(t), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(enis[i]),
			InstanceId: aws.String(inst), DeviceIndex: aws.Int32(1), NetworkCardIndex: aws.Int32(1)}); err != nil {
			t.Fatalf("attach to %s: %v", inst, err)
		}
	}
	ok := len(enis)
	for ; ok < 300; ok++ {
		if _, err := f.noRetry.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(enis[ok%2]), SecondaryPrivateIpAddressCount: aws.Int32(1)}); err != nil {
			wantCode(t, err, "RequestLimitExceeded", 503)
			break
		}
	}
	refilled := int(time.Since(start).Seconds()*5) + 1
	if ok < 100 || ok > 100+refilled {
		t.Fatalf("%d mutating calls for two instances before the first throttle, want 100 (+%d refilled)", ok, refilled)
	}
}

func TestMutatingAction(t *testing.T) {
	for action, want := range map[string]bool{
		"AssignPrivateIpAddresses": true, "CreateNetworkInterface": true, "ModifyNetworkInterfaceAttribute": true,
		"AttachNetworkInterface": false, "DescribeNetworkInterfaces": false, "CreateTags": false,
	} {
		if got := MutatingAction(action); got != want {
			t.Errorf("MutatingAction(%s) = %v, want %v", action, got, want)
		}
	}
}
