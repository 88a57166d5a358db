package bench

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Machine is where a measurement ran.
type Machine struct {
	Kernel    string `json:"kernel"` // uname -r
	CPUs      int    `json:"cpus"`   // online CPUs (nproc)
	CPUModel  string `json:"cpuModel"`
	MemoryMiB int    `json:"memoryMiB"`
	Go        string `json:"go"`
	// VM is true inside the test VM (QEMU TCG, e2e/vm/vmtest.sh).
	VM bool `json:"vm"`
}

// ThisMachine describes the machine the calling process runs on.
func ThisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), VM: os.Getenv("MULTINIC_IN_VM") == "1"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = string(bytes.TrimRight(u.Release[:], "\x00"))
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.Atoi(strings.Fields(procField("/proc/meminfo", "MemTotal") + " 0")[0]); err == nil {
		m.MemoryMiB = kb / 1024
	}
	return m
}

// String is a one-line description for the report.
func (m Machine) String() string {
	where := "host"
	if m.VM {
		where = "VM (QEMU TCG, e2e/vm/vmtest.sh)"
	}
	return where + ": Linux " + m.Kernel + ", " + strconv.Itoa(m.CPUs) + " CPU (" + m.CPUModel + "), " +
		strconv.Itoa(m.MemoryMiB) + " MiB, " + m.Go
}

// procField is the value of the first "key: value" line of a /proc file, or "".
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
