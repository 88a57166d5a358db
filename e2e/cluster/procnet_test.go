package cluster

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// parseProcAddr decodes "0100007F:1F90" (little-endian 32-bit words) into 127.0.0.1:8080.
func parseProcAddr(s string) (*net.TCPAddr, error) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return nil, err
	}
	ip := make(net.IP, len(hexIP)/2)
	for w := 0; w < len(hexIP)/8; w++ {
		word, err := strconv.ParseUint(hexIP[w*8:w*8+8], 16, 32)
		if err != nil {
			return nil, err
		}
		for b := 0; b < 4; b++ {
			ip[w*4+b] = byte(word >> (8 * b))
		}
	}
	return &net.TCPAddr{IP: ip, Port: int(port)}, nil
}
