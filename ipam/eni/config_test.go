package eni

import (
	"slices"
	"strings"
	"testing"
)

func TestParseCards(t *testing.T) {
	for _, tc := range []struct {
		in      string
		cards   []int
		all     bool
		wantErr bool
	}{
		{"", nil, false, false},
		{"all", nil, true, false},
		{"1,3", []int{1, 3}, false, false},
		{"5-7, 1 ,6", []int{1, 5, 6, 7}, false, false},
		{"x", nil, false, true},
		{"3-1", nil, false, true},
		{"-1", nil, false, true},
	} {
		cards, all, err := ParseCards(tc.in)
		if (err != nil) != tc.wantErr || all != tc.all || !slices.Equal(cards, tc.cards) {
			t.Errorf("ParseCards(%q) = %v, %v, %v", tc.in, cards, all, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no cluster", Config{}, "cluster"},
		{"bad subnet", Config{Cluster: "c", Cards: map[int]CardConfig{1: {SubnetID: "nope"}}}, `subnet "nope"`},
		{"bad mtu", Config{Cluster: "c", MTU: 10}, "mtu 10"},
		{"negative warm", Config{Cluster: "c", WarmTarget: ptr(-1)}, "warm target -1"},
		{"ok", Config{Cluster: "c"}, ""},
	} {
		err := tc.cfg.withDefaults().validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
