package testenv

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// TestProxy: traffic passes; Down breaks open connections and refuses new
// ones; Up accepts again on the same address.
func TestProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	p, err := StartProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	echo := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo through the proxy: %q, %v", line, err)
		}
		return c
	}
	c := echo()
	addr := p.Addr()
	p.Down()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a connection open at Down still reads")
	}
	c.Close()
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("the proxy accepted a connection while down")
	}
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	if p.Addr() != addr {
		t.Errorf("address after Up %s, want %s", p.Addr(), addr)
	}
	echo().Close()
}
