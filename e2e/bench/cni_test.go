package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
)

// plugin is a CNI plugin the benchmarks exec: its binary, its CNI_PATH (for IPAM delegates) and config.
type plugin struct {
	name    string
	bin     string
	cniPath string
	conf    []byte
}

// call is what one exec of a plugin cost: from just before fork+exec (start) to after wait.
type call struct {
	start time.Time
	dur   time.Duration
}

// execCNI runs a plugin as a runtime does and as internal/testing/harness's Pod.CNI does: from a thread in the node's
// netns, CNI_* (and env) in the environment, the config on stdin. The clock covers fork+exec to wait.
func execCNI(nodeNS ns.NetNS, p plugin, command, containerID, netnsPath, ifName, podName string, env ...string) (call, error) {
	cmd := exec.Command(p.bin)
	cmd.Env = append(cniEnv(p, command, containerID, netnsPath, ifName, podName), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(p.conf), &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var c call
	err := nodeNS.Do(func(ns.NetNS) error {
		c.start = time.Now()
		err := cmd.Run()
		c.dur = time.Since(c.start)
		return err
	})
	if err != nil {
		var cniErr types.Error
		if json.Unmarshal(stdout.Bytes(), &cniErr) == nil && cniErr.Code != 0 {
			return c, fmt.Errorf("%s %s %s: %w (stderr: %s)", p.name, command, ifName, &cniErr, strings.TrimSpace(stderr.String()))
		}
		return c, fmt.Errorf("%s %s %s: %w (stdout: %s, stderr: %s)", p.name, command, ifName, err, stdout.String(), strings.TrimSpace(stderr.String()))
	}
	return c, nil
}

func cniEnv(p plugin, command, containerID, netnsPath, ifName, podName string) []string {
	return []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + containerID,
		"CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=" + ifName,
		"CNI_ARGS=" + strings.Join([]string{"IgnoreUnknown=1",
			"K8S_POD_NAMESPACE=default", "K8S_POD_NAME=" + podName,
			"K8S_POD_INFRA_CONTAINER_ID=" + containerID, "K8S_POD_UID=uid-" + podName}, ";"),
		"CNI_PATH=" + p.cniPath,
		"PATH=" + os.Getenv("PATH"),
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// peakRSS runs the plugin like execCNI, but traced: stopped at its exit (PTRACE_O_TRACEEXIT), before its
// memory is gone, its VmHWM is read from /proc. It returns the plugin process's own peak RSS in KiB, not
// its children's (the reference's IPAM plugin is a child). ru_maxrss from wait4 cannot serve: Go starts
// children with CLONE_VM|CLONE_VFORK, and exec folds the parent's (the test's) high-water mark into the
// child's ru_maxrss, so every plugin would show the test process's RSS. Not timed: tracing slows it.
func peakRSS(nodeNS ns.NetNS, p plugin, command, containerID, netnsPath, ifName, podName string) (int64, error) {
	var hwm int64
	err := nodeNS.Do(func(ns.NetNS) error {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		defer r.Close()
		_, err = w.Write(p.conf) // a few hundred bytes: fits the pipe
		w.Close()
		if err != nil {
			return err
		}
		null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer null.Close()
		pid, err := syscall.ForkExec(p.bin, []string{p.bin}, &syscall.ProcAttr{
			Env:   cniEnv(p, command, containerID, netnsPath, ifName, podName),
			Files: []uintptr{r.Fd(), null.Fd(), null.Fd()},
			Sys:   &syscall.SysProcAttr{Ptrace: true, Setpgid: true},
		})
		if err != nil {
			return err
		}
		var ws syscall.WaitStatus
		started := false
		for {
			if _, err := syscall.Wait4(pid, &ws, syscall.WALL, nil); err != nil {
				if errors.Is(err, syscall.EINTR) {
					continue
				}
				return fmt.Errorf("wait for %s: %w", p.name, err)
			}
			if ws.Exited() || ws.Signaled() {
				break
			}
			if !ws.Stopped() {
				continue
			}
			sig := ws.StopSignal()
			switch {
			case sig == syscall.SIGTRAP && !started: // at exec
				started = true
				if err := syscall.PtraceSetOptions(pid, syscall.PTRACE_O_TRACEEXIT); err != nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					return fmt.Errorf("trace %s: %w", p.name, err)
				}
				sig = 0
			case sig == syscall.SIGTRAP && ws.TrapCause() == syscall.PTRACE_EVENT_EXIT:
				hwm = vmHWM(pid)
				sig = 0
			}
			if err := syscall.PtraceCont(pid, int(sig)); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("continue %s: %w", p.name, err)
			}
		}
		if ws.ExitStatus() != 0 {
			return fmt.Errorf("%s %s %s (traced): %v", p.name, command, ifName, ws)
		}
		return nil
	})
	return hwm, err
}

// vmHWM is a process's peak RSS in KiB from /proc/<pid>/status, 0 when unreadable.
func vmHWM(pid int) int64 {
	kb, _ := strconv.ParseInt(strings.Fields(procField(fmt.Sprintf("/proc/%d/status", pid), "VmHWM") + " 0")[0], 10, 64)
	return kb
}
