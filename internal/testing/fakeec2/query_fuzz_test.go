package fakeec2

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// fuzzMaxRequests bounds the requests one fuzz input is split into.
const fuzzMaxRequests = 8

// FuzzQuery feeds arbitrary Query API form bodies through the parser and every action (Server.Handler, as
// the SDK reaches it: POST / with an Authorization header). One input is up to fuzzMaxRequests bodies, one
// per line, run in order against a fresh server, so that sequences (create, attach, assign, ...) are
// explored; "$ENI" and "$ATT" in a body stand for the newest ENI and its attachment. Every answer must be
// well-formed XML: 200 with <ActionResponse>, or a 4xx/5xx EC2 error with a code. Afterwards no address may
// have two owners and the subnets' counters must agree with the ENIs.
func FuzzQuery(f *testing.F) {
	f.Add("Action=DescribeInstances")
	f.Add("Action=CreateNetworkInterface&SubnetId=subnet-0c000000000000001&SecondaryPrivateIpAddressCount=3\n" +
		"Action=AttachNetworkInterface&NetworkInterfaceId=$ENI&InstanceId=i-0123456789abcdef0&DeviceIndex=1&NetworkCardIndex=1")
	f.Add("Action=Bogus&Filter.1.Name=tag:x&Filter.1.Value.1=*")
	f.Fuzz(func(t *testing.T, input string) {
		srv, err := New(fuzzConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		h := srv.Handler()
		for i, body := range strings.SplitN(input, "\n", fuzzMaxRequests) {
			body = substitute(srv, body)
			req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAFUZZ/20260101/us-east-1/ec2/aws4_request")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if err := checkAnswer(rec.Code, rec.Body.Bytes()); err != nil {
				t.Fatalf("request %d %q: %v\n%s", i+1, body, err, rec.Body.Bytes())
			}
		}
		checkInvariants(t, srv.State())
	})
}

// fuzzConfig is a trn1.32xlarge with one subnet per card and a /28 to run out of.
func fuzzConfig() Config {
	subnets, _ := SubnetsPerCard(8)
	subnets = append(subnets, SubnetConfig{ID: "subnet-0f000000000000028", CIDR: "10.0.200.0/28"})
	return Config{Subnets: subnets, Instances: []InstanceConfig{{ID: "i-0123456789abcdef0", Type: "trn1.32xlarge"}}}
}

// substitute replaces $ENI and $ATT with the newest ENI's ID and attachment ID.
func substitute(s *Server, body string) string {
	if !strings.Contains(body, "$") {
		return body
	}
	st := s.State()
	var eni, att string
	if n := len(st.ENIs); n > 0 {
		eni, att = st.ENIs[n-1].ID, st.ENIs[n-1].AttachmentID
	}
	return strings.NewReplacer("$ENI", eni, "$ATT", att).Replace(body)
}

// checkAnswer requires well-formed XML: a 200 whose root ends in "Response", or a 4xx/5xx EC2 error
// envelope with a code.
func checkAnswer(status int, body []byte) error {
	dec := xml.NewDecoder(bytes.NewReader(body))
	root := ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return errors.New("malformed XML: " + err.Error())
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	switch {
	case status == http.StatusOK:
		if !strings.HasSuffix(root, "Response") || root == "Response" {
			return errors.New("200 with root <" + root + ">, want <ActionResponse>")
		}
		return nil
	case status >= 400 && status < 600:
		var env errorEnvelope
		if err := xml.Unmarshal(body, &env); err != nil {
			return errors.New("error body: " + err.Error())
		}
		if len(env.Errors) != 1 || env.Errors[0].Code == "" {
			return errors.New("error without exactly one code")
		}
		return nil
	}
	return errors.New("status " + http.StatusText(status) + ": want 200 or 4xx/5xx")
}
