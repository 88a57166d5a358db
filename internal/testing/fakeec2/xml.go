package fakeec2

import (
	"bytes"
	"cmp"
	"encoding/xml"
	"net/http"
	"slices"
	"time"
)

const ec2Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"

// Element names below are what the SDK and the CLI read; they are case-sensitive.

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xmlGroup struct {
	GroupID   string `xml:"groupId"`
	GroupName string `xml:"groupName"`
}

type xmlPrivateIP struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
	Primary          bool   `xml:"primary"`
}

type xmlAddress struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
}

type xmlPrefix struct {
	IPv4Prefix string `xml:"ipv4Prefix"`
}

type xmlIPv6Address struct {
	IPv6Address   string `xml:"ipv6Address"`
	IsPrimaryIPv6 bool   `xml:"isPrimaryIpv6"`
}

type xmlIPv6Prefix struct {
	IPv6Prefix string `xml:"ipv6Prefix"`
}

type xmlSubnetIPv6CIDR struct {
	AssociationID string `xml:"associationId"`
	IPv6CidrBlock string `xml:"ipv6CidrBlock"`
	State         struct {
		State string `xml:"state"`
	} `xml:"ipv6CidrBlockState"`
}

type xmlAttachment struct {
	AttachmentID        string `xml:"attachmentId"`
	InstanceID          string `xml:"instanceId,omitempty"`
	InstanceOwnerID     string `xml:"instanceOwnerId,omitempty"`
	DeviceIndex         int    `xml:"deviceIndex"`
	NetworkCardIndex    int    `xml:"networkCardIndex"`
	Status              string `xml:"status"`
	AttachTime          string `xml:"attachTime"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
}

type xmlENI struct {
	NetworkInterfaceID string           `xml:"networkInterfaceId"`
	SubnetID           string           `xml:"subnetId"`
	VpcID              string           `xml:"vpcId"`
	AvailabilityZone   string           `xml:"availabilityZone,omitempty"`
	Description        string           `xml:"description"`
	OwnerID            string           `xml:"ownerId,omitempty"`
	RequesterManaged   bool             `xml:"requesterManaged"`
	Status             string           `xml:"status"`
	MacAddress         string           `xml:"macAddress"`
	PrivateIPAddress   string           `xml:"privateIpAddress"`
	SourceDestCheck    bool             `xml:"sourceDestCheck"`
	InterfaceType      string           `xml:"interfaceType"`
	Groups             []xmlGroup       `xml:"groupSet>item"`
	Attachment         *xmlAttachment   `xml:"attachment,omitempty"`
	Tags               []xmlTag         `xml:"tagSet>item"`
	PrivateIPs         []xmlPrivateIP   `xml:"privateIpAddressesSet>item"`
	Prefixes           []xmlPrefix      `xml:"ipv4PrefixSet>item"`
	IPv6Addresses      []xmlIPv6Address `xml:"ipv6AddressesSet>item"`
	IPv6Prefixes       []xmlIPv6Prefix  `xml:"ipv6PrefixSet>item"`
	IPv6Native         bool             `xml:"ipv6Native"`
}

type xmlInstance struct {
	InstanceID    string `xml:"instanceId"`
	InstanceType  string `xml:"instanceType"`
	InstanceState struct {
		Code int    `xml:"code"`
		Name string `xml:"name"`
	} `xml:"instanceState"`
	Placement struct {
		AvailabilityZone string `xml:"availabilityZone"`
		Tenancy          string `xml:"tenancy"`
	} `xml:"placement"`
	SubnetID         string     `xml:"subnetId"`
	VpcID            string     `xml:"vpcId"`
	PrivateIPAddress string     `xml:"privateIpAddress"`
	LaunchTime       string     `xml:"launchTime"`
	Groups           []xmlGroup `xml:"groupSet>item"`
	Tags             []xmlTag   `xml:"tagSet>item"`
	ENIs             []xmlENI   `xml:"networkInterfaceSet>item"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

type xmlSubnet struct {
	SubnetID                string              `xml:"subnetId"`
	SubnetArn               string              `xml:"subnetArn"`
	State                   string              `xml:"state"`
	VpcID                   string              `xml:"vpcId"`
	OwnerID                 string              `xml:"ownerId"`
	CidrBlock               string              `xml:"cidrBlock"`
	AvailableIPAddressCount int                 `xml:"availableIpAddressCount"`
	AvailabilityZone        string              `xml:"availabilityZone"`
	DefaultForAz            bool                `xml:"defaultForAz"`
	MapPublicIPOnLaunch     bool                `xml:"mapPublicIpOnLaunch"`
	Tags                    []xmlTag            `xml:"tagSet>item"`
	IPv6CIDRs               []xmlSubnetIPv6CIDR `xml:"ipv6CidrBlockAssociationSet>item"`
	AssignIPv6OnCreation    bool                `xml:"assignIpv6AddressOnCreation"`
	IPv6Native              bool                `xml:"ipv6Native"`
}

type xmlNetworkCard struct {
	NetworkCardIndex         int     `xml:"networkCardIndex"`
	NetworkPerformance       string  `xml:"networkPerformance"`
	MaximumNetworkInterfaces int     `xml:"maximumNetworkInterfaces"`
	BaselineBandwidthInGbps  float64 `xml:"baselineBandwidthInGbps"`
	PeakBandwidthInGbps      float64 `xml:"peakBandwidthInGbps"`
}

type xmlInstanceType struct {
	InstanceType      string `xml:"instanceType"`
	CurrentGeneration bool   `xml:"currentGeneration"`
	Hypervisor        string `xml:"hypervisor"`
	VCPUInfo          struct {
		DefaultVCpus int `xml:"defaultVCpus"`
	} `xml:"vCpuInfo"`
	MemoryInfo struct {
		SizeInMiB int `xml:"sizeInMiB"`
	} `xml:"memoryInfo"`
	NetworkInfo struct {
		NetworkPerformance        string           `xml:"networkPerformance"`
		MaximumNetworkInterfaces  int              `xml:"maximumNetworkInterfaces"`
		MaximumNetworkCards       int              `xml:"maximumNetworkCards"`
		DefaultNetworkCardIndex   int              `xml:"defaultNetworkCardIndex"`
		NetworkCards              []xmlNetworkCard `xml:"networkCards>item"`
		IPv4AddressesPerInterface int              `xml:"ipv4AddressesPerInterface"`
		IPv6AddressesPerInterface int              `xml:"ipv6AddressesPerInterface"`
		IPv6Supported             bool             `xml:"ipv6Supported"`
		EnaSupport                string           `xml:"enaSupport"`
		EfaSupported              bool             `xml:"efaSupported"`
	} `xml:"networkInfo"`
}

// Response bodies, one per action; the envelope adds the root and requestId.

type describeInstancesResp struct {
	Reservations []xmlReservation `xml:"reservationSet>item"`
	NextToken    string           `xml:"nextToken,omitempty"`
}

type describeInstanceTypesResp struct {
	Types     []xmlInstanceType `xml:"instanceTypeSet>item"`
	NextToken string            `xml:"nextToken,omitempty"`
}

type describeSubnetsResp struct {
	Subnets   []xmlSubnet `xml:"subnetSet>item"`
	NextToken string      `xml:"nextToken,omitempty"`
}

type describeENIsResp struct {
	ENIs      []xmlENI `xml:"networkInterfaceSet>item"`
	NextToken string   `xml:"nextToken,omitempty"`
}

type createENIResp struct {
	ENI         xmlENI `xml:"networkInterface"`
	ClientToken string `xml:"clientToken,omitempty"`
}

type attachResp struct {
	AttachmentID     string `xml:"attachmentId"`
	NetworkCardIndex int    `xml:"networkCardIndex"`
}

type assignResp struct {
	NetworkInterfaceID string       `xml:"networkInterfaceId"`
	Addresses          []xmlAddress `xml:"assignedPrivateIpAddressesSet>item"`
	Prefixes           []xmlPrefix  `xml:"assignedIpv4PrefixSet>item"`
}

type assign6Resp struct {
	NetworkInterfaceID string   `xml:"networkInterfaceId"`
	Addresses          []string `xml:"assignedIpv6Addresses>item"` // the new ones only
	Prefixes           []string `xml:"assignedIpv6PrefixSet>item"`
}

type unassign6Resp struct {
	NetworkInterfaceID string   `xml:"networkInterfaceId"`
	Addresses          []string `xml:"unassignedIpv6Addresses>item"`
	Prefixes           []string `xml:"unassignedIpv6PrefixSet>item"`
}

type returnResp struct {
	Return bool `xml:"return"`
}

var okResp = returnResp{Return: true}

type envelope struct {
	XMLName   xml.Name
	Xmlns     string `xml:"xmlns,attr"`
	RequestID string `xml:"requestId"`
	Inner     []byte `xml:",innerxml"`
}

type errorEnvelope struct {
	XMLName xml.Name `xml:"Response"`
	Errors  []struct {
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	} `xml:"Errors>Error"`
	RequestID string `xml:"RequestID"`
}

// writeXML writes body as <ActionResponse>, its fields inlined under the root.
func writeXML(w http.ResponseWriter, action, requestID string, body any) {
	var inner bytes.Buffer
	if err := xml.NewEncoder(&inner).EncodeElement(body, xml.StartElement{Name: xml.Name{Local: "x"}}); err != nil {
		writeError(w, requestID, newErr("InternalError", "encode response: %v", err))
		return
	}
	b := inner.Bytes()
	if bytes.HasPrefix(b, []byte("<x>")) && bytes.HasSuffix(b, []byte("</x>")) {
		b = b[3 : len(b)-4]
	} else {
		b = nil // <x/>: no fields
	}
	out, err := xml.Marshal(envelope{XMLName: xml.Name{Local: action + "Response"}, Xmlns: ec2Namespace, RequestID: requestID, Inner: b})
	if err != nil {
		writeError(w, requestID, newErr("InternalError", "encode response: %v", err))
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(out)
}

func writeError(w http.ResponseWriter, requestID string, e *apiError) {
	env := errorEnvelope{RequestID: requestID}
	env.Errors = append(env.Errors, struct {
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}{e.Code, e.Message})
	out, _ := xml.Marshal(env)
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(e.Status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(out)
}

func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

func xmlTags(m map[string]string) []xmlTag {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]xmlTag, 0, len(keys))
	for _, k := range keys {
		out = append(out, xmlTag{Key: k, Value: m[k]})
	}
	return out
}

// toXML renders an ENI; s.mu is held.
func (s *Server) toXML(e *eni) xmlENI {
	sn := s.subnets[e.subnetID]
	x := xmlENI{
		NetworkInterfaceID: e.id,
		SubnetID:           e.subnetID,
		VpcID:              s.cfg.VPCID,
		AvailabilityZone:   sn.az,
		Description:        e.description,
		OwnerID:            s.cfg.AccountID,
		Status:             e.status(),
		MacAddress:         e.mac,
		PrivateIPAddress:   e.primaryIP.String(),
		SourceDestCheck:    e.sourceDestCheck,
		InterfaceType:      cmp.Or(e.interfaceType, "interface"),
		Tags:               xmlTags(e.tags),
	}
	for _, g := range e.groups {
		name := g
		if g == s.cfg.SecurityGroupID {
			name = "default"
		}
		x.Groups = append(x.Groups, xmlGroup{GroupID: g, GroupName: name})
	}
	if a := e.att; a != nil {
		x.Attachment = &xmlAttachment{
			AttachmentID:        a.id,
			InstanceID:          a.instanceID,
			InstanceOwnerID:     s.cfg.AccountID,
			DeviceIndex:         a.device,
			NetworkCardIndex:    a.card,
			Status:              "attached",
			AttachTime:          isoTime(a.at),
			DeleteOnTermination: a.deleteOnTermination,
		}
	}
	x.PrivateIPs = append(x.PrivateIPs, xmlPrivateIP{PrivateIPAddress: e.primaryIP.String(), Primary: true})
	for _, a := range e.secondary {
		x.PrivateIPs = append(x.PrivateIPs, xmlPrivateIP{PrivateIPAddress: a.String()})
	}
	for _, p := range e.prefixes {
		x.Prefixes = append(x.Prefixes, xmlPrefix{IPv4Prefix: p.String()})
	}
	for _, a := range e.ipv6 {
		x.IPv6Addresses = append(x.IPv6Addresses, xmlIPv6Address{IPv6Address: a.String()})
	}
	for _, p := range e.ipv6Prefixes {
		x.IPv6Prefixes = append(x.IPv6Prefixes, xmlIPv6Prefix{IPv6Prefix: p.String()})
	}
	return x
}

func (s *Server) instanceTypeXML(t *InstanceType) xmlInstanceType {
	var x xmlInstanceType
	x.InstanceType = t.Name
	x.CurrentGeneration = true
	x.Hypervisor = "nitro"
	x.VCPUInfo.DefaultVCpus = t.VCPUs
	x.MemoryInfo.SizeInMiB = t.MemoryMiB
	n := &x.NetworkInfo
	n.NetworkPerformance = t.NetworkPerformance
	n.MaximumNetworkInterfaces = t.MaxInterfaces
	n.MaximumNetworkCards = t.NetworkCards
	n.IPv4AddressesPerInterface = t.IPv4PerInterface
	n.IPv6AddressesPerInterface = t.IPv6PerInterface
	n.IPv6Supported = t.IPv6Supported
	n.EnaSupport = "required"
	n.EfaSupported = t.EFASupported
	for k := range t.NetworkCards {
		n.NetworkCards = append(n.NetworkCards, xmlNetworkCard{
			NetworkCardIndex:         k,
			NetworkPerformance:       t.CardNetworkPerformance,
			MaximumNetworkInterfaces: t.InterfacesPerCard,
			BaselineBandwidthInGbps:  t.CardBaselineGbps,
			PeakBandwidthInGbps:      t.CardPeakGbps,
		})
	}
	return x
}
