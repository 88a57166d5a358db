package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/multinic/multinic/ipam/api"
)

// statusReport is what `multinic-agent status -o json` prints.
type statusReport struct {
	api.NodeStatus
	// Allocations only with --allocations.
	Allocations []api.Allocation `json:"allocations,omitempty"`
}

// runStatus prints what the agent on this node knows: per card, and with --allocations every allocation.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("multinic-agent status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", api.DefaultSocketPath, "the agent's socket (root only)")
	allocs := fs.Bool("allocations", false, "also list every allocation: pod, interface, card, address, ENI, age")
	output := fs.String("o", "table", "output format: table or json")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the agent")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("status: unexpected argument %q", fs.Arg(0))
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("status: -o %q invalid: must be table or json", *output)
	}
	rep, err := fetchStatus(ctx, *socket, *timeout, *allocs)
	if err != nil {
		return err
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return writeStatusTable(stdout, rep, *allocs)
}

// fetchStatus asks the agent for its node status and, with allocs, its allocations.
func fetchStatus(ctx context.Context, socket string, timeout time.Duration, allocs bool) (statusReport, error) {
	c := api.NewClient(socket, timeout)
	defer c.Close()
	var rep statusReport
	var err error
	if rep.NodeStatus, err = c.Node(ctx); err != nil {
		return rep, agentError(socket, err)
	}
	if allocs {
		if rep.Allocations, err = c.List(ctx); err != nil {
			return rep, agentError(socket, err)
		}
		slices.SortFunc(rep.Allocations, func(x, y api.Allocation) int {
			return cmp.Or(cmp.Compare(x.PodNamespace+"/"+x.PodName, y.PodNamespace+"/"+y.PodName),
				cmp.Compare(x.IfName, y.IfName), cmp.Compare(x.ContainerID, y.ContainerID))
		})
	}
	return rep, nil
}

// agentError says plainly why the agent could not be asked.
func agentError(socket string, err error) error {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot open the agent's socket %s: run as root: %w", socket, err)
	case errors.Is(err, api.ErrUnavailable):
		return fmt.Errorf("the multinic agent is not running on this node (nothing answers on %s): %w", socket, err)
	}
	return err
}

func writeStatusTable(w io.Writer, rep statusReport, allocs bool) error {
	ready := "yes"
	if !rep.Ready {
		ready = "no: ENIs of the managed cards are still being set up"
	}
	fmt.Fprintf(w, "node %s  instance %s  ready %s\n\n", rep.Node, or(rep.Instance, "-"), ready)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CARD\tMODE\tSUBNET\tENIS\tALLOCATED\tWARM\tCOOLING\tEXCLUSIVE A/W/C\tREADY\tLAST ERROR")
	var notes []string
	for _, c := range rep.Cards {
		cr, last := "yes", "-"
		if !c.Ready {
			cr = "no"
			notes = append(notes, fmt.Sprintf("card %d not ready: %s", c.Card, c.Reason))
		}
		if c.LastError != "" {
			last = age(rep.Time, c.LastErrorAt) + " ago"
			notes = append(notes, fmt.Sprintf("card %d last error %s ago (%s): %s", c.Card, age(rep.Time, c.LastErrorAt),
				c.LastErrorAt.Format(time.RFC3339), c.LastError))
		}
		if c.IPv6 != nil {
			notes = append(notes, fmt.Sprintf("card %d family %s: %d IPv6 /80 prefixes, %d IPv6 addresses allocated", c.Card, c.Family,
				c.IPv6.Prefixes, c.IPv6.Allocated))
		}
		enis := or(strings.Join(c.ENIs, ","), "-")
		if len(c.ExclusiveENIs) > 0 {
			enis += " +" + strconv.Itoa(len(c.ExclusiveENIs)) + " exclusive"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d/%d/%d\t%s\t%s\n", c.Card, c.Mode, or(c.Subnet, "-"), enis,
			c.Shared.Allocated, c.Shared.Warm, c.Shared.Cooling,
			c.Exclusive.Allocated, c.Exclusive.Warm, c.Exclusive.Cooling, cr, last)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	if !allocs {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tINTERFACE\tCARD\tADDRESS\tENI\tEXCLUSIVE\tAGE\tCONTAINER")
	for _, a := range rep.Allocations {
		excl := "no"
		if a.Exclusive {
			excl = "yes"
		}
		pod := or(a.PodNamespace+"/"+a.PodName, "-")
		if a.PodName == "" {
			pod = or(a.PodUID, "-")
		}
		addr := a.Address.String() // an exclusive allocation's is its ENI's primary, whatever the family
		switch {
		case a.IPv6.IsValid() && !a.Address.IsValid():
			addr = a.IPv6.String()
		case a.IPv6.IsValid():
			addr += "," + a.IPv6.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", pod, a.IfName, a.Card, addr, a.ENIID, excl,
			age(rep.Time, a.AllocatedAt), a.ContainerID)
	}
	return tw.Flush()
}

// age is now-t the way kubectl shows it: 45s, 12m, 3h, 2d.
func age(now, t time.Time) string {
	d := max(now.Sub(t), 0)
	switch {
	case d < 2*time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < 2*time.Hour:
		return strconv.Itoa(int(d.Minutes())) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + "h"
	}
	return strconv.Itoa(int(d.Hours()/24)) + "d"
}

func or(s, def string) string {
	if s == "" || s == "/" {
		return def
	}
	return s
}
