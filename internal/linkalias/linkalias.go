// Package linkalias is the alias an ENI link carries while it is inside a pod: the plugin writes it when it
// moves the link in (so DEL needs no state on disk) and the agent reads it when the link comes home from a
// netns that died without a DEL (so it can give the link back its name and MTU before the next pod).
package linkalias

import (
	"fmt"
	"strconv"
	"strings"
)

// Prefix starts every multinic alias; a link without it is not one multinic moved.
const Prefix = "multinic:v1 "

// Orig is what a moved ENI link had in the node netns.
type Orig struct {
	Name string
	MTU  int
	Up   bool
}

// Alias is the link alias recording o.
func (o Orig) Alias() string {
	up := 0
	if o.Up {
		up = 1
	}
	return fmt.Sprintf("%sname=%s mtu=%d up=%d", Prefix, o.Name, o.MTU, up)
}

// Parse reads an alias written by Orig.Alias; ok is false for any other alias.
func Parse(alias string) (o Orig, ok bool) {
	rest, found := strings.CutPrefix(alias, Prefix)
	if !found {
		return Orig{}, false
	}
	for _, f := range strings.Fields(rest) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "name":
			o.Name = v
		case "mtu":
			o.MTU, _ = strconv.Atoi(v)
		case "up":
			o.Up = v == "1"
		}
	}
	return o, o.Name != ""
}
