package proc

import (
	"os"
	"testing"
)

func TestStatReaders(t *testing.T) {
	pid := os.Getpid()
	burn := 0
	for i := range 50_000_000 { // some CPU time to count
		burn += i
	}
	if cpu, err := CPUSeconds(pid); err != nil || cpu <= 0 {
		t.Fatalf("CPUSeconds(self) = %v, %v (burned %d)", cpu, err, burn)
	}
	if _, err := CPUSeconds(-1); err == nil {
		t.Fatal("CPUSeconds of no process: no error")
	}
	if rss := PeakRSSKiB(pid); rss <= 0 {
		t.Fatalf("PeakRSSKiB(self) = %d", rss)
	}
	ports, err := FreePorts(5)
	if err != nil || len(ports) != 5 {
		t.Fatalf("FreePorts(5) = %v, %v", ports, err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p == 6379 || p <= 0 {
			t.Fatalf("FreePorts: %v", ports)
		}
		seen[p] = true
	}
}
