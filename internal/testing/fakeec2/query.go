package fakeec2

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// query reads the flat, 1-based Query API encoding:
// Name.1, Name.2, Filter.1.Name, Filter.1.Value.1, TagSpecification.1.Tag.1.Key.
type query url.Values

func (q query) str(key string) string { return url.Values(q).Get(key) }

func (q query) has(key string) bool { _, ok := q[key]; return ok }

// required returns the value of key or a MissingParameter error.
func (q query) required(key string) (string, error) {
	v := q.str(key)
	if v == "" {
		return "", errMissing(key)
	}
	return v, nil
}

// list returns prefix.1, prefix.2, ... until the first gap.
func (q query) list(prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		k := prefix + "." + strconv.Itoa(i)
		if !q.has(k) {
			return out
		}
		out = append(out, q.str(k))
	}
}

// count returns how many prefix.N.* structures there are.
func (q query) count(prefix string) int {
	n := 0
	for i := 1; ; i++ {
		p := prefix + "." + strconv.Itoa(i) + "."
		found := false
		for k := range q {
			if strings.HasPrefix(k, p) {
				found = true
				break
			}
		}
		if !found {
			return n
		}
		n++
	}
}

// intParam parses an optional integer; def when absent.
func (q query) intParam(key string, def int) (int, error) {
	v := q.str(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, errInvalidParam("Invalid value '%s' for %s", v, key)
	}
	return n, nil
}

// boolParam parses an optional boolean; def when absent.
func (q query) boolParam(key string, def bool) (bool, error) {
	switch v := q.str(key); v {
	case "":
		return def, nil
	case "true":
		return true, nil
	case "false":
		return false, nil
	default:
		return false, errInvalidParam("Invalid value '%s' for %s", v, key)
	}
}

type filter struct {
	name   string
	values []string
}

func (q query) filters() []filter {
	var out []filter
	for i := 1; i <= q.count("Filter"); i++ {
		p := fmt.Sprintf("Filter.%d.", i)
		out = append(out, filter{name: q.str(p + "Name"), values: q.list(p + "Value")})
	}
	return out
}

type tag struct{ key, value string }

// tags reads prefix.N.Key / prefix.N.Value.
func (q query) tags(prefix string) []tag {
	var out []tag
	for i := 1; i <= q.count(prefix); i++ {
		p := fmt.Sprintf("%s.%d.", prefix, i)
		out = append(out, tag{key: q.str(p + "Key"), value: q.str(p + "Value")})
	}
	return out
}

// tagSpecs returns the tags of the TagSpecifications for resourceType; other
// resource types are an error because the fake only creates that one here.
func (q query) tagSpecs(resourceType string) ([]tag, error) {
	var out []tag
	for i := 1; i <= q.count("TagSpecification"); i++ {
		p := fmt.Sprintf("TagSpecification.%d.", i)
		if rt := q.str(p + "ResourceType"); rt != resourceType {
			return nil, errInvalidParam("'%s' is not a valid taggable resource type for this operation.", rt)
		}
		out = append(out, q.tags(p+"Tag")...)
	}
	return out, nil
}

// matchFilters reports whether values(name) matches every filter (values ORed within a filter).
// valuesOf returns ok=false for an unsupported filter name.
func matchFilters(fs []filter, valuesOf func(name string) ([]string, bool)) (bool, error) {
	for _, f := range fs {
		have, ok := valuesOf(f.name)
		if !ok {
			return false, errInvalidParam("The filter '%s' is invalid", f.name)
		}
		if !anyMatch(f.values, have) {
			return false, nil
		}
	}
	return true, nil
}

func anyMatch(want, have []string) bool {
	for _, w := range want {
		for _, h := range have {
			if glob(w, h) {
				return true
			}
		}
	}
	return false
}

// glob matches EC2 filter wildcards: * any run, ? one character.
func glob(pattern, s string) bool {
	if !strings.ContainsAny(pattern, "*?") {
		return pattern == s
	}
	if pattern == "" {
		return s == ""
	}
	switch pattern[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if glob(pattern[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return s != "" && glob(pattern[1:], s[1:])
	default:
		return s != "" && s[0] == pattern[0] && glob(pattern[1:], s[1:])
	}
}

// tagFilter handles tag:<key> and tag-key against a tag map.
func tagFilter(name string, tags map[string]string) ([]string, bool) {
	if k, ok := strings.CutPrefix(name, "tag:"); ok {
		if v, ok := tags[k]; ok {
			return []string{v}, true
		}
		return nil, true
	}
	if name == "tag-key" {
		keys := make([]string, 0, len(tags))
		for k := range tags {
			keys = append(keys, k)
		}
		return keys, true
	}
	return nil, false
}

// page applies MaxResults/NextToken to n items; it returns the index range and the next token.
func (q query) page(n int) (from, to int, next string, err error) {
	maxResults, err := q.intParam("MaxResults", 0)
	if err != nil {
		return 0, 0, "", err
	}
	if q.has("MaxResults") && (maxResults < 5 || maxResults > 1000) {
		return 0, 0, "", errInvalidParam("Value ( %d ) for parameter maxResults is invalid. Expecting a value between 5 and 1000.", maxResults)
	}
	if tok := q.str("NextToken"); tok != "" {
		off, ok := strings.CutPrefix(tok, "fake-page-")
		from, err = strconv.Atoi(off)
		if !ok || err != nil || from < 0 || from > n {
			return 0, 0, "", errInvalidParam("The token '%s' is invalid.", tok)
		}
	}
	to = n
	if maxResults > 0 && from+maxResults < n {
		to = from + maxResults
		next = fmt.Sprintf("fake-page-%d", to)
	}
	return from, to, next, nil
}

// ipv6Request reads the IPv6 part of CreateNetworkInterface (structured: Ipv6Addresses.N.Ipv6Address,
// Ipv6Prefix.N.Ipv6Prefix) or AssignIpv6Addresses (flat: Ipv6Addresses.N, Ipv6Prefix.N). EC2 takes one of
// the four ways to ask per request.
func (q query) ipv6Request(structured bool) (addrRequest, error) {
	var r addrRequest
	var err error
	if r.count, err = q.intParam("Ipv6AddressCount", 0); err != nil {
		return r, err
	}
	if r.prefixCount, err = q.intParam("Ipv6PrefixCount", 0); err != nil {
		return r, err
	}
	if r.count < 0 || r.prefixCount < 0 {
		return r, errInvalidParam("IPv6 address and prefix counts must not be negative")
	}
	if q.str("EnablePrimaryIpv6") == "true" {
		return r, newErr("UnsupportedOperation", "fake-ec2 does not implement a primary IPv6 address (EnablePrimaryIpv6)")
	}
	addrs, prefixes := q.list("Ipv6Addresses"), q.list("Ipv6Prefix")
	if structured {
		addrs, prefixes = nil, nil
		for i := 1; i <= q.count("Ipv6Addresses"); i++ {
			p := fmt.Sprintf("Ipv6Addresses.%d.", i)
			if q.str(p+"IsPrimaryIpv6") == "true" {
				return r, newErr("UnsupportedOperation", "fake-ec2 does not implement a primary IPv6 address (IsPrimaryIpv6)")
			}
			addrs = append(addrs, q.str(p+"Ipv6Address"))
		}
		for i := 1; i <= q.count("Ipv6Prefix"); i++ {
			prefixes = append(prefixes, q.str(fmt.Sprintf("Ipv6Prefix.%d.Ipv6Prefix", i)))
		}
	}
	for _, v := range addrs {
		a, err := parseAddr6(v)
		if err != nil {
			return r, err
		}
		r.explicit = append(r.explicit, a)
	}
	for _, v := range prefixes {
		p, err := parsePrefix6(v)
		if err != nil {
			return r, err
		}
		r.prefixes = append(r.prefixes, p)
	}
	if r.kinds() > 1 {
		return r, errIPv6OneKind()
	}
	return r, nil
}
