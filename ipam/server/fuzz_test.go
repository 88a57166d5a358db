package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/multinic/multinic/ipam/api"
)

// FuzzDecodeAllocateRequest: whatever arrives on the socket, decoding never panics and yields either a valid
// request (that survives a round trip) or an ErrInvalid. Seeds: testdata/fuzz/FuzzDecodeAllocateRequest.
func FuzzDecodeAllocateRequest(f *testing.F) {
	f.Add([]byte(`{"card":1,"containerID":"c","ifName":"net1"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := decodeAllocateRequest(bytes.NewReader(data))
		if err != nil {
			var e *api.Error
			if !errors.Is(err, api.ErrInvalid) || !errors.As(err, &e) || e.Code != api.CodeInvalid {
				t.Fatalf("error %v (%T) is not an invalid *api.Error", err, err)
			}
			return
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("decoded request %+v does not validate: %v", req, err)
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeAllocateRequest(bytes.NewReader(b))
		if err != nil || again != req {
			t.Fatalf("round trip of %+v: got %+v, %v", req, again, err)
		}
	})
}
