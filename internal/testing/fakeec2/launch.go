package fakeec2

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// LaunchTemplateData is the part of a launch template that gives an instance its ENIs at launch, in EC2's
// own JSON shape (RequestLaunchTemplateData, as `aws ec2 create-launch-template --launch-template-data`
// takes it): RunInstances creates and attaches these ENIs itself, so nothing on the node calls EC2 for them.
type LaunchTemplateData struct {
	NetworkInterfaces []LaunchNetworkInterface `json:"NetworkInterfaces,omitempty"`
	TagSpecifications []LaunchTagSpecification `json:"TagSpecifications,omitempty"`
}

// LaunchNetworkInterface is one of LaunchTemplateData's NetworkInterfaces
// (LaunchTemplateInstanceNetworkInterfaceSpecificationRequest). The one at card 0, device 0 is the primary.
type LaunchNetworkInterface struct {
	NetworkCardIndex               int      `json:"NetworkCardIndex,omitempty"`
	DeviceIndex                    int      `json:"DeviceIndex"`
	SubnetID                       string   `json:"SubnetId,omitempty"`
	Groups                         []string `json:"Groups,omitempty"`
	Description                    string   `json:"Description,omitempty"`
	SecondaryPrivateIPAddressCount int      `json:"SecondaryPrivateIpAddressCount,omitempty"`
	IPv4PrefixCount                int      `json:"Ipv4PrefixCount,omitempty"`
	// DeleteOnTermination: EC2 deletes an interface it created at launch with the instance unless false.
	DeleteOnTermination *bool  `json:"DeleteOnTermination,omitempty"`
	InterfaceType       string `json:"InterfaceType,omitempty"` // "interface" (""), "efa", "efa-only"
}

// LaunchTagSpecification tags what the launch creates: ResourceType "network-interface" tags every ENI the
// launch template's NetworkInterfaces make (the primary included), "instance" the instance; the fake keeps
// no other resources, so other types' tags go nowhere.
type LaunchTagSpecification struct {
	ResourceType string      `json:"ResourceType"`
	Tags         []LaunchTag `json:"Tags"`
}

// LaunchTag is one tag of a LaunchTagSpecification.
type LaunchTag struct {
	Key   string `json:"Key"`
	Value string `json:"Value"`
}

// launchResourceTypes are the resource types a launch template's TagSpecifications may name.
var launchResourceTypes = []string{"instance", "volume", "network-interface", "spot-instances-request", "elastic-gpu"}

// validateLaunch checks an instance's launch template data as RunInstances does; field names say where.
func (c Config) validateLaunch(i int, in InstanceConfig, subnets map[string]bool) error {
	typ := catalog[in.Type]
	type slot struct{ card, device int }
	seen := map[slot]bool{}
	perCard := map[int]int{}
	for j, ni := range in.NetworkInterfaces {
		f := fmt.Sprintf("instances[%d].NetworkInterfaces[%d]", i, j)
		switch {
		case ni.NetworkCardIndex < 0 || ni.NetworkCardIndex >= typ.NetworkCards:
			return fmt.Errorf("%s.NetworkCardIndex %d invalid: %s has network cards 0-%d", f, ni.NetworkCardIndex, typ.Name, typ.NetworkCards-1)
		case ni.DeviceIndex < 0:
			return fmt.Errorf("%s.DeviceIndex %d invalid: must be >= 0", f, ni.DeviceIndex)
		case seen[slot{ni.NetworkCardIndex, ni.DeviceIndex}]:
			return fmt.Errorf("%s invalid: a second interface at network card %d, device index %d", f, ni.NetworkCardIndex, ni.DeviceIndex)
		case ni.SubnetID != "" && !subnets[ni.SubnetID]:
			return fmt.Errorf("%s.SubnetId %q invalid: no such subnet", f, ni.SubnetID)
		case ni.SecondaryPrivateIPAddressCount < 0 || ni.IPv4PrefixCount < 0:
			return fmt.Errorf("%s invalid: SecondaryPrivateIpAddressCount and Ipv4PrefixCount must be >= 0", f)
		case 1+ni.SecondaryPrivateIPAddressCount+ni.IPv4PrefixCount > typ.IPv4PerInterface:
			return fmt.Errorf("%s invalid: %d secondary addresses and %d prefixes exceed %s's %d IPv4 addresses per interface (PrivateIpAddressLimitExceeded)",
				f, ni.SecondaryPrivateIPAddressCount, ni.IPv4PrefixCount, typ.Name, typ.IPv4PerInterface)
		case ni.NetworkCardIndex == 0 && ni.DeviceIndex == 0 && ni.InterfaceType == "efa-only":
			return fmt.Errorf("%s.InterfaceType efa-only invalid: the primary network interface cannot be EFA-only", f)
		}
		switch ni.InterfaceType {
		case "", "interface", "efa", "efa-only":
		default:
			return fmt.Errorf("%s.InterfaceType %q invalid: must be interface, efa or efa-only", f, ni.InterfaceType)
		}
		seen[slot{ni.NetworkCardIndex, ni.DeviceIndex}] = true
		if perCard[ni.NetworkCardIndex]++; perCard[ni.NetworkCardIndex] > typ.InterfacesPerCard {
			return fmt.Errorf("%s invalid: more than %s's %d interfaces on network card %d (AttachmentLimitExceeded)", f, typ.Name, typ.InterfacesPerCard, ni.NetworkCardIndex)
		}
	}
	if len(in.NetworkInterfaces) > 0 && !seen[slot{0, 0}] {
		return fmt.Errorf("instances[%d].NetworkInterfaces invalid: none at network card 0, device index 0 (the primary)", i)
	}
	if n := len(seen); n > typ.MaxInterfaces {
		return fmt.Errorf("instances[%d].NetworkInterfaces invalid: %d interfaces exceed %s's %d", i, n, typ.Name, typ.MaxInterfaces)
	}
	for j, ts := range in.TagSpecifications {
		if !slices.Contains(launchResourceTypes, ts.ResourceType) {
			return fmt.Errorf("instances[%d].TagSpecifications[%d].ResourceType %q invalid: must be one of %v", i, j, ts.ResourceType, launchResourceTypes)
		}
		for k, t := range ts.Tags {
			if t.Key == "" {
				return fmt.Errorf("instances[%d].TagSpecifications[%d].Tags[%d].Key invalid: empty", i, j, k)
			}
		}
	}
	return nil
}

// primarySubnet is the subnet of the instance's primary ENI: the launch template's, when it gives one.
func (in InstanceConfig) primarySubnet() string {
	for _, ni := range in.NetworkInterfaces {
		if ni.NetworkCardIndex == 0 && ni.DeviceIndex == 0 && ni.SubnetID != "" {
			return ni.SubnetID
		}
	}
	return in.SubnetID
}

// launchENIs makes the instance's ENIs its launch template asks for, attached from the launch on, as
// RunInstances does; primary is the instance's primary ENI, already made and attached. Only New calls it.
func (s *Server) launchENIs(ic InstanceConfig, primary *eni, at time.Time) error {
	var tags []LaunchTag
	for _, ts := range ic.TagSpecifications {
		switch ts.ResourceType {
		case "network-interface":
			tags = append(tags, ts.Tags...)
		case "instance":
			for _, t := range ts.Tags {
				s.instances[ic.ID].tags[t.Key] = t.Value
			}
		}
	}
	for _, ni := range ic.NetworkInterfaces {
		e := primary
		if ni.NetworkCardIndex != 0 || ni.DeviceIndex != 0 {
			subnetID := ni.SubnetID
			if subnetID == "" {
				subnetID = primary.subnetID
			}
			sn := s.subnets[subnetID]
			if sn.az != s.cfg.AZ {
				return fmt.Errorf("network card %d device %d: subnet %s is in %s, instances run in %s", ni.NetworkCardIndex, ni.DeviceIndex, sn.id, sn.az, s.cfg.AZ)
			}
			var err error
			if e, err = s.createENI(sn, netip.Addr{}, ni.Description, slices.Clone(ni.Groups)); err != nil {
				return fmt.Errorf("network card %d device %d: %w", ni.NetworkCardIndex, ni.DeviceIndex, err)
			}
			dot := ni.DeleteOnTermination == nil || *ni.DeleteOnTermination
			e.att = &attachment{id: s.newAttachmentID(), instanceID: ic.ID, card: ni.NetworkCardIndex, device: ni.DeviceIndex,
				deleteOnTermination: dot, at: at}
			s.attachments[e.att.id] = e.id
		} else if len(ni.Groups) > 0 {
			e.groups = slices.Clone(ni.Groups)
		}
		if ni.InterfaceType != "" && ni.InterfaceType != "interface" {
			e.interfaceType = ni.InterfaceType
		}
		if _, _, err := s.assign(e, addrRequest{count: ni.SecondaryPrivateIPAddressCount, prefixCount: ni.IPv4PrefixCount}); err != nil {
			return fmt.Errorf("network card %d device %d: %w", ni.NetworkCardIndex, ni.DeviceIndex, err)
		}
		for _, t := range tags {
			e.tags[t.Key] = t.Value
		}
	}
	return nil
}

// LoadLaunchTemplateData reads launch template data (the JSON `aws ec2 create-launch-template
// --launch-template-data file://...` takes); keys the fake does not model are an error, so a file that
// passes launches here exactly as written.
func LoadLaunchTemplateData(path string) (LaunchTemplateData, error) {
	var d LaunchTemplateData
	err := loadStrict(path, "launch template data", &d)
	return d, err
}
