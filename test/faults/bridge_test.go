package faults

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/depbridge/depbridge/internal/testenv"
)

// bridge is one running bridge binary.
type bridge struct {
	name   string
	cmd    *exec.Cmd
	addr   string
	logs   *testenv.SyncBuffer
	exited chan struct{}
	err    error // after exited
}

// startBridge starts the binary on config with kubeconfig and extra
// flags, listening on a free port; it does not wait for readiness.
func startBridge(binary, name, config, kubeconfig string, extra ...string) (*bridge, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	b := &bridge{name: name, addr: addr, logs: &testenv.SyncBuffer{}, exited: make(chan struct{})}
	args := append([]string{"run", "--config", config, "--kubeconfig", kubeconfig, "--listen", addr,
		"--instance", name, "--no-reload", "--log-format", "json", "--log-level", cmp.Or(os.Getenv("FAULTS_LOG_LEVEL"), "info")}, extra...)
	b.cmd = exec.Command(binary, args...)
	b.cmd.Stdout, b.cmd.Stderr = b.logs, b.logs
	if err := b.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start bridge %s: %w", name, err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.exited)
	}()
	return b, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// ready reports the status of /readyz: 200 for an active bridge, 503 for
// a standby or one starting; 0 when it does not answer.
func (b *bridge) ready() int {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + b.addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitReady waits until /readyz answers 200, the process exits, or the
// timeout passes.
func (b *bridge) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for b.ready() != http.StatusOK {
		select {
		case <-b.exited:
			return fmt.Errorf("bridge %s exited before it was ready: %v", b.name, b.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bridge %s not ready within %s", b.name, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// kill sends SIGKILL and waits for the process to be gone.
func (b *bridge) kill() error {
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill bridge %s: %w", b.name, err)
	}
	select {
	case <-b.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("bridge %s still running 10s after SIGKILL", b.name)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (b *bridge) stop() error {
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
		if b.err != nil {
			return fmt.Errorf("bridge %s exit after SIGTERM: %w", b.name, b.err)
		}
		return nil
	case <-time.After(30 * time.Second):
		_ = b.kill()
		return fmt.Errorf("bridge %s did not stop within 30s of SIGTERM", b.name)
	}
}

// metricSum is the sum of a metric's samples on /metrics, over all its
// labels (the value itself for an unlabelled one).
func (b *bridge) metricSum(ctx context.Context, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("bridge %s metrics: %w", b.name, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sum, found := 0.0, false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("bridge %s: metric line %q: %w", b.name, line, err)
		}
		sum, found = sum+v, true
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("bridge %s: no metric %s", b.name, name)
	}
	return sum, nil
}

// tail is the last n lines of the bridge's output.
func (b *bridge) tail(n int) string {
	lines := strings.Split(strings.TrimRight(b.logs.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
