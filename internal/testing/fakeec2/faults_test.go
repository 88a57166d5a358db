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
