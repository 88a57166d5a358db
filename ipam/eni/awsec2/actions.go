package awsec2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// The EC2 actions the agent takes, one method each. Errors are EC2's (*APIError, see the classifiers in
// errors.go); the caller says what it was doing.

// NetworkInfo is what an instance type allows for networking.
type NetworkInfo struct {
	Cards, DefaultCard, MaxENIs, IPv4PerENI int
	// ENIsPerCard: the most ENIs each card takes.
	ENIsPerCard map[int]int
	// BaselineGbps and PeakGbps are each card's bandwidth (NetworkCards[].BaselineBandwidthInGbps and
	// PeakBandwidthInGbps); a card EC2 gives no figure for is absent.
	BaselineGbps, PeakGbps map[int]float64
}

// InstanceType describes one instance type's networking. A type without per-card data is one card that
// takes MaxENIs.
func (c *Client) InstanceType(ctx context.Context, typ string) (NetworkInfo, error) {
	out, err := call(ctx, c, "DescribeInstanceTypes", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.DescribeInstanceTypesOutput, error) {
		return c.api.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{types.InstanceType(typ)}}, o)
	})
	if err != nil {
		return NetworkInfo{}, err
	}
	if len(out.InstanceTypes) != 1 || out.InstanceTypes[0].NetworkInfo == nil {
		return NetworkInfo{}, errors.New("no network info")
	}
	ni := out.InstanceTypes[0].NetworkInfo
	l := NetworkInfo{
		Cards:       int(aws.ToInt32(ni.MaximumNetworkCards)),
		DefaultCard: int(aws.ToInt32(ni.DefaultNetworkCardIndex)),
		MaxENIs:     int(aws.ToInt32(ni.MaximumNetworkInterfaces)),
		IPv4PerENI:  int(aws.ToInt32(ni.Ipv4AddressesPerInterface)),
		ENIsPerCard: map[int]int{}, BaselineGbps: map[int]float64{}, PeakGbps: map[int]float64{},
	}
	for _, nc := range ni.NetworkCards {
		k := int(aws.ToInt32(nc.NetworkCardIndex))
		l.ENIsPerCard[k] = int(aws.ToInt32(nc.MaximumNetworkInterfaces))
		if nc.BaselineBandwidthInGbps != nil {
			l.BaselineGbps[k] = *nc.BaselineBandwidthInGbps
		}
		if nc.PeakBandwidthInGbps != nil {
			l.PeakGbps[k] = *nc.PeakBandwidthInGbps
		}
	}
	if l.Cards == 0 {
		l.Cards = 1
	}
	if len(l.ENIsPerCard) == 0 {
		l.ENIsPerCard[0] = l.MaxENIs
	}
	return l, nil
}

// Filter is one DescribeNetworkInterfaces filter.
type Filter struct {
	Name   string
	Values []string
}

// TagFilter matches a tag's value.
func TagFilter(key, value string) Filter { return Filter{Name: "tag:" + key, Values: []string{value}} }

// Interfaces lists the network interfaces the filters match, every page (without filters: every one in
// the region, in the unfiltered class).
func (c *Client) Interfaces(ctx context.Context, filters ...Filter) ([]Interface, error) {
	var fs []types.Filter
	for _, f := range filters {
		fs = append(fs, types.Filter{Name: aws.String(f.Name), Values: f.Values})
	}
	var all []Interface
	var token *string
	for {
		out, err := call(ctx, c, "DescribeNetworkInterfaces", len(fs) > 0, func(ctx context.Context, o func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error) {
			return c.api.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: fs, NextToken: token}, o)
		})
		if err != nil {
			return nil, err
		}
		for _, ni := range out.NetworkInterfaces {
			all = append(all, Parse(ni))
		}
		if aws.ToString(out.NextToken) == "" {
			return all, nil
		}
		token = out.NextToken
	}
}

// Subnet is what the agent needs of a subnet: its IPv4 CIDR and its IPv6 CIDR (invalid: none associated).
type Subnet struct {
	CIDR, IPv6CIDR netip.Prefix
}

// Subnets returns the CIDRs of each subnet. Of the IPv6 blocks, the first associated one counts (EC2
// associates one /64 per subnet).
func (c *Client) Subnets(ctx context.Context, ids []string) (map[string]Subnet, error) {
	out, err := call(ctx, c, "DescribeSubnets", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error) {
		return c.api.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: ids}, o)
	})
	if err != nil {
		return nil, err
	}
	cidrs := make(map[string]Subnet, len(out.Subnets))
	for _, sn := range out.Subnets {
		p, err := netip.ParsePrefix(aws.ToString(sn.CidrBlock))
		if err != nil {
			return nil, fmt.Errorf("subnet %s cidr %q: %w", aws.ToString(sn.SubnetId), aws.ToString(sn.CidrBlock), err)
		}
		s := Subnet{CIDR: p}
		for _, a := range sn.Ipv6CidrBlockAssociationSet {
			if st := a.Ipv6CidrBlockState; st != nil && st.State != types.SubnetCidrBlockStateCodeAssociated {
				continue
			}
			if p6, err := netip.ParsePrefix(aws.ToString(a.Ipv6CidrBlock)); err == nil && p6.Addr().Is6() {
				s.IPv6CIDR = p6.Masked()
				break
			}
		}
		cidrs[aws.ToString(sn.SubnetId)] = s
	}
	return cidrs, nil
}

// CreateRequest is one CreateNetworkInterface.
type CreateRequest struct {
	SubnetID    string
	Groups      []string
	Description string
	Tags        map[string]string
	// Count secondary addresses (or /28 prefixes, with Prefixes) to start with; 0: the primary alone.
	Count    int
	Prefixes bool
	// IPv6Prefixes is how many IPv6 /80 prefixes (Ipv6PrefixCount), IPv6Addresses how many IPv6 addresses
	// (Ipv6AddressCount) the ENI starts with.
	IPv6Prefixes, IPv6Addresses int
	// ClientToken makes the create idempotent across the client's retries; a new logical create takes a
	// new one.
	ClientToken string
}

// Create creates one network interface, tagged at creation.
func (c *Client) Create(ctx context.Context, r CreateRequest) (Interface, error) {
	in := &ec2.CreateNetworkInterfaceInput{
		SubnetId: aws.String(r.SubnetID), Groups: r.Groups, Description: aws.String(r.Description),
		ClientToken: aws.String(r.ClientToken),
	}
	if len(r.Tags) > 0 {
		spec := types.TagSpecification{ResourceType: types.ResourceTypeNetworkInterface}
		for _, k := range slices.Sorted(maps.Keys(r.Tags)) {
			spec.Tags = append(spec.Tags, types.Tag{Key: aws.String(k), Value: aws.String(r.Tags[k])})
		}
		in.TagSpecifications = []types.TagSpecification{spec}
	}
	switch {
	case r.Count == 0:
	case r.Prefixes:
		in.Ipv4PrefixCount = aws.Int32(int32(r.Count))
	default:
		in.SecondaryPrivateIpAddressCount = aws.Int32(int32(r.Count))
	}
	if r.IPv6Prefixes > 0 {
		in.Ipv6PrefixCount = aws.Int32(int32(r.IPv6Prefixes))
	}
	if r.IPv6Addresses > 0 {
		in.Ipv6AddressCount = aws.Int32(int32(r.IPv6Addresses))
	}
	out, err := call(ctx, c, "CreateNetworkInterface", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.CreateNetworkInterfaceOutput, error) {
		return c.api.CreateNetworkInterface(ctx, in, o)
	})
	if err != nil {
		return Interface{}, err
	}
	if out.NetworkInterface == nil {
		return Interface{}, errors.New("no network interface in the answer")
	}
	return Parse(*out.NetworkInterface), nil
}

// Attach attaches an ENI at (card, device) and returns the attachment's ID.
func (c *Client) Attach(ctx context.Context, eniID, instanceID string, card, device int) (string, error) {
	out, err := call(ctx, c, "AttachNetworkInterface", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.AttachNetworkInterfaceOutput, error) {
		return c.api.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
			NetworkInterfaceId: aws.String(eniID), InstanceId: aws.String(instanceID),
			DeviceIndex: aws.Int32(int32(device)), NetworkCardIndex: aws.Int32(int32(card)),
		}, o)
	})
	if err != nil {
		return "", err
	}
	return aws.ToString(out.AttachmentId), nil
}

// Detach detaches an attachment.
func (c *Client) Detach(ctx context.Context, attachmentID string) error {
	_, err := call(ctx, c, "DetachNetworkInterface", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.DetachNetworkInterfaceOutput, error) {
		return c.api.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(attachmentID)}, o)
	})
	return err
}

// Delete deletes a network interface.
func (c *Client) Delete(ctx context.Context, eniID string) error {
	_, err := call(ctx, c, "DeleteNetworkInterface", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.DeleteNetworkInterfaceOutput, error) {
		return c.api.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(eniID)}, o)
	})
	return err
}

// SetDeleteOnTermination makes EC2 delete the ENI with the instance.
func (c *Client) SetDeleteOnTermination(ctx context.Context, eniID, attachmentID string) error {
	_, err := call(ctx, c, "ModifyNetworkInterfaceAttribute", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.ModifyNetworkInterfaceAttributeOutput, error) {
		return c.api.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
			NetworkInterfaceId: aws.String(eniID),
			Attachment:         &types.NetworkInterfaceAttachmentChanges{AttachmentId: aws.String(attachmentID), DeleteOnTermination: aws.Bool(true)},
		}, o)
	})
	return err
}

// Assigned is what an assign gave: secondary addresses, or /28 prefixes.
type Assigned struct {
	Addresses []netip.Addr
	Prefixes  []netip.Prefix
}

// All is every address assigned: the addresses, then every address of the prefixes.
func (a Assigned) All() []netip.Addr { return withPrefixes(a.Addresses, a.Prefixes) }

// Assign asks EC2 for n more secondary addresses (or n /28 prefixes) on an ENI.
func (c *Client) Assign(ctx context.Context, eniID string, n int, prefixes bool) (Assigned, error) {
	in := &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eniID)}
	if prefixes {
		in.Ipv4PrefixCount = aws.Int32(int32(n))
	} else {
		in.SecondaryPrivateIpAddressCount = aws.Int32(int32(n))
	}
	out, err := c.assign(ctx, in)
	if err != nil {
		return Assigned{}, err
	}
	var got Assigned
	for _, a := range out.AssignedPrivateIpAddresses {
		if ip, err := netip.ParseAddr(aws.ToString(a.PrivateIpAddress)); err == nil {
			got.Addresses = append(got.Addresses, ip)
		}
	}
	got.Prefixes = parsePrefixes(out.AssignedIpv4Prefixes)
	return got, nil
}

// AssignAddresses assigns these secondary addresses to an ENI again.
func (c *Client) AssignAddresses(ctx context.Context, eniID string, addrs []netip.Addr) error {
	_, err := c.assign(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eniID), PrivateIpAddresses: strs(addrs)})
	return err
}

func (c *Client) assign(ctx context.Context, in *ec2.AssignPrivateIpAddressesInput) (*ec2.AssignPrivateIpAddressesOutput, error) {
	return call(ctx, c, "AssignPrivateIpAddresses", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.AssignPrivateIpAddressesOutput, error) {
		return c.api.AssignPrivateIpAddresses(ctx, in, o)
	})
}

// Unassign gives secondary addresses and prefixes of an ENI back to EC2.
func (c *Client) Unassign(ctx context.Context, eniID string, addrs []netip.Addr, pfxs []netip.Prefix) error {
	in := &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eniID), PrivateIpAddresses: strs(addrs), Ipv4Prefixes: strs(pfxs)}
	_, err := call(ctx, c, "UnassignPrivateIpAddresses", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.UnassignPrivateIpAddressesOutput, error) {
		return c.api.UnassignPrivateIpAddresses(ctx, in, o)
	})
	return err
}

// AssignIPv6Prefixes asks EC2 for n more IPv6 /80 prefixes on an ENI (AssignIpv6Addresses with
// Ipv6PrefixCount) and returns the new ones.
func (c *Client) AssignIPv6Prefixes(ctx context.Context, eniID string, n int) ([]netip.Prefix, error) {
	in := &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(eniID), Ipv6PrefixCount: aws.Int32(int32(n))}
	out, err := call(ctx, c, "AssignIpv6Addresses", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.AssignIpv6AddressesOutput, error) {
		return c.api.AssignIpv6Addresses(ctx, in, o)
	})
	if err != nil {
		return nil, err
	}
	return parsePrefixes6(out.AssignedIpv6Prefixes), nil
}

// UnassignIPv6 gives IPv6 addresses and prefixes of an ENI back to EC2.
func (c *Client) UnassignIPv6(ctx context.Context, eniID string, addrs []netip.Addr, pfxs []netip.Prefix) error {
	in := &ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(eniID), Ipv6Addresses: strs(addrs), Ipv6Prefixes: strs(pfxs)}
	_, err := call(ctx, c, "UnassignIpv6Addresses", true, func(ctx context.Context, o func(*ec2.Options)) (*ec2.UnassignIpv6AddressesOutput, error) {
		return c.api.UnassignIpv6Addresses(ctx, in, o)
	})
	return err
}

func strs[T fmt.Stringer](xs []T) []string {
	var out []string
	for _, x := range xs {
		out = append(out, x.String())
	}
	return out
}

// Metadata reads one IMDS path (not rate limited: IMDS is the instance's own, not EC2's API).
func Metadata(ctx context.Context, api IMDSAPI, path string) (string, error) {
	out, err := api.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", fmt.Errorf("read imds %s: %w", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 1<<20))
	if err != nil {
		return "", fmt.Errorf("read imds %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}
