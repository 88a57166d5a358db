package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/multinic/multinic/ipam/api"
)

// Backend is what the agent plugs into the server. Errors may wrap the allocator's sentinels, api's
// sentinels, or be an *api.Error; errorFor turns them into codes. ctx is cancelled when the client goes away.
type Backend interface {
	Allocate(ctx context.Context, req api.AllocateRequest) (api.AllocateResponse, error)
	Release(ctx context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error)
	List(ctx context.Context) ([]api.Allocation, error)
	Status(ctx context.Context, card int) (api.Status, error)
}

// Introspector is what a Backend may also serve for operators; the server answers GET /v1/node and
// GET /v1/logs only when its Backend implements it.
type Introspector interface {
	Node(ctx context.Context) (api.NodeStatus, error)
	Logs(ctx context.Context) (api.LogsResponse, error)
}

// Claimer is what a Backend may also serve for the NRI plugin: the prepared DRA claim devices of a pod
// (GET /v1/claims), and the interfaces the plugin made of them (POST /v1/claims/interfaces, which must not
// wait on the API server: the plugin waits for its answer within containerd's time budget). The agent's DRA
// kubelet plugin implements it; an agent without DRA answers "no endpoint".
type Claimer interface {
	Claims(ctx context.Context, pod api.PodRef) ([]api.ClaimAttachment, error)
	ClaimInterfaces(ctx context.Context, req api.ClaimInterfacesRequest) error
}

// MaxRequestBytes bounds a request body; a real request is a few hundred bytes.
const MaxRequestBytes = 64 << 10

// ShutdownGrace is how long Serve lets requests in flight finish once its context is done; after it their
// contexts are cancelled and their connections closed.
const ShutdownGrace = 10 * time.Second

// Serve answers requests on l with b until ctx is done, then shuts down gracefully and returns nil. It closes
// l (which, for a listener from Listen, removes the socket file). A nil logger discards the logs.
func Serve(ctx context.Context, l net.Listener, b Backend, logger *slog.Logger) error {
	return serve(ctx, l, b, logger, ShutdownGrace)
}

func serve(ctx context.Context, l net.Listener, b Backend, logger *slog.Logger, grace time.Duration) error {
	return serveFor(ctx, l, b, logger, grace, rootOnly)
}

// serveFor is serve answering only peers whose uid allowed accepts.
func serveFor(ctx context.Context, l net.Listener, b Backend, logger *slog.Logger, grace time.Duration, allowed func(uid uint32) bool) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Requests outlive ctx by the grace period, so they get a context of their own.
	reqCtx, cancelReqs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelReqs()
	srv := &http.Server{
		Handler: &handler{b: b, log: logger, allowed: allowed},
		// No ReadTimeout or WriteTimeout: an allocate may legitimately wait for a refill, and the socket is
		// root-only (mode 0600, and every request's peer is checked with SO_PEERCRED), so slow clients are
		// not an attack.
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
		ConnContext:       withPeer,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		logger.Warn("requests still running after the shutdown grace period, cancelling them", "grace", grace)
		cancelReqs()
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve on %s: %w", l.Addr(), err)
	}
	return nil
}

type handler struct {
	b       Backend
	log     *slog.Logger
	allowed func(uid uint32) bool
}

// reqLog collects what the one log line per request says.
type reqLog struct {
	attrs []slog.Attr
}

func (rl *reqLog) add(attrs ...slog.Attr) { rl.attrs = append(rl.attrs, attrs...) }

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rl := &reqLog{}
	var (
		body any
		err  error
	)
	func() {
		// A panicking backend must still answer, or the client would take the agent for dead.
		defer func() {
			if p := recover(); p != nil {
				err = &api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("agent panicked serving %s: %v", r.URL.Path, p)}
			}
		}()
		if perr := checkPeer(r.Context(), h.allowed); perr != nil {
			err = perr
		} else {
			body, err = h.route(w, r, rl)
		}
	}()
	status := http.StatusOK
	var errBody *api.Error
	if err != nil {
		errBody = asError(err)
		status, body = statusOf(err, errBody), errBody
	}
	writeJSON(w, status, body)

	level, result := slog.LevelInfo, "ok"
	if errBody != nil {
		result = string(errBody.Code)
		rl.add(slog.String("error", errBody.Message))
		if errBody.Code == api.CodeInternal {
			level = slog.LevelError
		} else {
			level = slog.LevelWarn
		}
	} else if r.Method == http.MethodGet {
		// STATUS and list are polled; keep them out of the normal log.
		level = slog.LevelDebug
	}
	rl.add(slog.String("result", result), slog.Duration("duration", time.Since(start)))
	h.log.LogAttrs(r.Context(), level, r.Method+" "+r.URL.Path, rl.attrs...)
}

// methods is each endpoint's one method.
var methods = map[string]string{
	api.PathAllocate:        http.MethodPost,
	api.PathRelease:         http.MethodPost,
	api.PathAllocations:     http.MethodGet,
	api.PathStatus:          http.MethodGet,
	api.PathNode:            http.MethodGet,
	api.PathLogs:            http.MethodGet,
	api.PathClaims:          http.MethodGet,
	api.PathClaimInterfaces: http.MethodPost,
}

// route dispatches to the endpoint and returns its body or its error.
func (h *handler) route(w http.ResponseWriter, r *http.Request, rl *reqLog) (any, error) {
	method, ok := methods[r.URL.Path]
	switch {
	case !ok:
		return nil, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("no endpoint %s", r.URL.Path)}
	case r.Method != method:
		return nil, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("%s %s: method not allowed, use %s", r.Method, r.URL.Path, method)}
	}
	body := http.MaxBytesReader(w, r.Body, MaxRequestBytes)
	ctx := r.Context()
	if r.URL.Path == api.PathNode || r.URL.Path == api.PathLogs {
		return h.introspect(ctx, r)
	}
	if r.URL.Path == api.PathClaims || r.URL.Path == api.PathClaimInterfaces {
		return h.claims(ctx, r, body, rl)
	}
	switch r.URL.Path {
	case api.PathAllocate:
		req, err := decodeAllocateRequest(body)
		if err != nil {
			return nil, err
		}
		rl.add(slog.Int("card", req.Card), slog.String("container", req.ContainerID),
			slog.String("ifname", req.IfName), slog.String("pod", req.Describe()), slog.Bool("exclusive", req.Exclusive),
			slog.String("family", api.NormalFamily(req.Family)))
		resp, err := h.b.Allocate(ctx, req)
		if err != nil {
			return nil, errorFor(err)
		}
		if (api.WantsIPv4(req.Family) && !resp.Address.IsValid()) ||
			(api.WantsIPv6(req.Family) && (resp.IPv6 == nil || !resp.IPv6.Address.Is6())) {
			return nil, &api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("allocate card %d family %s for container %s: backend returned no address",
				req.Card, api.NormalFamily(req.Family), req.ContainerID)}
		}
		rl.add(slog.String("address", resp.Address.String()), slog.String("eni", resp.ENIID))
		if resp.IPv6 != nil {
			rl.add(slog.String("ipv6", resp.IPv6.Address.String()))
		}
		return resp, nil
	case api.PathRelease:
		var req api.ReleaseRequest
		if err := decodeJSON(body, &req); err != nil {
			return nil, err
		}
		rl.add(slog.String("container", req.ContainerID), slog.String("ifname", req.IfName))
		if err := req.Validate(); err != nil {
			return nil, err
		}
		resp, err := h.b.Release(ctx, req)
		if err != nil {
			return nil, errorFor(err)
		}
		rl.add(slog.Bool("released", resp.Released))
		return resp, nil
	case api.PathAllocations:
		list, err := h.b.List(ctx)
		if err != nil {
			return nil, errorFor(err)
		}
		if list == nil {
			list = []api.Allocation{} // "[]", not null
		}
		rl.add(slog.Int("count", len(list)))
		return api.ListResponse{Allocations: list}, nil
	default: // api.PathStatus
		card, perr := parseCard(r.URL.Query())
		if perr != nil {
			return nil, perr
		}
		rl.add(slog.Int("card", card))
		st, err := h.b.Status(ctx, card)
		if err != nil {
			return nil, errorFor(err)
		}
		st.Card = card
		rl.add(slog.Bool("ready", st.Ready))
		return st, nil
	}
}

// claims answers GET /v1/claims and POST /v1/claims/interfaces, when the backend serves DRA claims.
func (h *handler) claims(ctx context.Context, r *http.Request, body io.Reader, rl *reqLog) (any, error) {
	c, ok := h.b.(Claimer)
	if !ok {
		return nil, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("no endpoint %s: the agent serves no DRA claims (start it with --dra)", r.URL.Path)}
	}
	if r.URL.Path == api.PathClaimInterfaces {
		var req api.ClaimInterfacesRequest
		if err := decodeJSON(body, &req); err != nil {
			return nil, err
		}
		rl.add(slog.String("pod", req.Describe()), slog.Int("attached", len(req.Attached)), slog.Int("detached", len(req.Detached)))
		if err := req.Validate(); err != nil {
			return nil, err
		}
		if err := c.ClaimInterfaces(ctx, req); err != nil {
			return nil, errorFor(err)
		}
		return api.ClaimInterfacesResponse{}, nil
	}
	pod, err := api.PodOfClaimsQuery(r.URL.Query())
	if err != nil {
		return nil, err
	}
	rl.add(slog.String("pod", pod.Describe()))
	atts, err := c.Claims(ctx, pod)
	if err != nil {
		return nil, errorFor(err)
	}
	if atts == nil {
		atts = []api.ClaimAttachment{} // "[]", not null
	}
	rl.add(slog.Int("count", len(atts)))
	return api.ClaimsResponse{Attachments: atts}, nil
}

// introspect answers the operators' read-only endpoints, when the backend serves them.
func (h *handler) introspect(ctx context.Context, r *http.Request) (any, error) {
	in, ok := h.b.(Introspector)
	if !ok {
		return nil, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("no endpoint %s", r.URL.Path)}
	}
	var (
		body any
		err  error
	)
	if r.URL.Path == api.PathNode {
		body, err = in.Node(ctx)
	} else {
		body, err = in.Logs(ctx)
	}
	if err != nil {
		return nil, errorFor(err)
	}
	return body, nil
}

func asError(err error) *api.Error {
	var e *api.Error
	if errors.As(err, &e) {
		return e
	}
	return errorFor(err)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body, _ = json.Marshal(&api.Error{Code: api.CodeInternal, Message: "encode answer: " + err.Error()})
	}
	body = append(body, '\n')
	// With Content-Length the client tells a body cut short (the agent went away) from a whole one, whatever
	// its size.
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body) // the client sees a truncated body as an error; nothing more to do here
}

// decodeAllocateRequest reads and validates an allocate request. It never panics; any error matches
// ErrInvalid.
func decodeAllocateRequest(r io.Reader) (api.AllocateRequest, error) {
	// The outer Card shadows the embedded one, so a missing "card" is told apart from card 0.
	var w struct {
		api.AllocateRequest
		Card *int `json:"card"`
	}
	if err := decodeJSON(r, &w); err != nil {
		return api.AllocateRequest{}, err
	}
	if w.Card == nil {
		return api.AllocateRequest{}, invalidf("\"card\" is required")
	}
	req := w.AllocateRequest
	req.Card = *w.Card
	if err := req.Validate(); err != nil {
		return api.AllocateRequest{}, err
	}
	return req, nil
}

// decodeJSON decodes exactly one JSON object into v, refusing trailing data and ignoring fields v does not
// have (a newer plugin's; see api's compatibility rule). Errors are *api.Error with CodeInvalid and say which
// field or byte is wrong.
func decodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	// Reading to EOF also lets net/http notice a client that goes away while the backend works.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return jsonError(err)
		}
		return invalidf("decode request: trailing data after the JSON object")
	}
	return nil
}

func jsonError(err error) error {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
		mbe *http.MaxBytesError
	)
	switch {
	case errors.As(err, &mbe):
		return &tooLarge{invalidf("decode request: body larger than %d bytes", mbe.Limit)}
	case errors.Is(err, io.EOF):
		return invalidf("decode request: empty body")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalidf("decode request: truncated JSON")
	case errors.As(err, &syn):
		return invalidf("decode request: malformed JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.As(err, &typ):
		if typ.Field != "" {
			return invalidf("decode request: %q: cannot use JSON %s as %s", typ.Field, typ.Value, typ.Type)
		}
		return invalidf("decode request: cannot use JSON %s as %s", typ.Value, typ.Type)
	}
	return invalidf("decode request: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// parseCard reads the query parameter of GET /v1/status; others are ignored (see api's compatibility rule).
func parseCard(q url.Values) (int, *api.Error) {
	vals, ok := q["card"]
	switch {
	case !ok:
		return 0, invalidf("query parameter \"card\" is required")
	case len(vals) != 1:
		return 0, invalidf("query parameter \"card\" given %d times", len(vals))
	}
	card, err := strconv.Atoi(vals[0])
	if err != nil || card < 0 {
		return 0, invalidf("query parameter \"card\" %q invalid: must be a number, 0 or more", vals[0])
	}
	return card, nil
}
