package awsec2

import (
	"context"
	"errors"
	"strings"

	"github.com/aws/smithy-go"
)

// APIError is an EC2 error as the agent reports it: "Code: Message". It unwraps to the SDK's error.
type APIError struct {
	Code    string
	Message string
	Err     error
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }
func (e *APIError) Unwrap() error { return e.Err }

// ErrorCode returns EC2's error code in err's chain, or "".
func ErrorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// SubnetFull: the subnet cannot give the addresses (or /28 prefixes) asked for; fewer may still fit.
func SubnetFull(err error) bool {
	code := ErrorCode(err)
	return code == "InsufficientFreeAddressesInSubnet" || code == "InsufficientCidrBlocks"
}

// DeviceInUse: another ENI took the device index an attach asked for.
func DeviceInUse(err error) bool {
	return ErrorCode(err) == "InvalidParameterValue" && strings.Contains(err.Error(), "device index")
}

// InUse: EC2 refuses to delete an ENI that is attached (or still detaching).
func InUse(err error) bool {
	return ErrorCode(err) == "InvalidParameterValue" && strings.Contains(err.Error(), "currently in use")
}

// NotFound: the ENI (or the attachment) does not exist (any more).
func NotFound(err error) bool {
	code := ErrorCode(err)
	return code == "InvalidNetworkInterfaceID.NotFound" || code == "InvalidAttachmentID.NotFound"
}

// throttleCodes are EC2's "slow down" answers.
var throttleCodes = map[string]bool{
	"RequestLimitExceeded": true, "Throttling": true, "ThrottlingException": true,
	"RequestThrottled": true, "EC2ThrottledException": true,
}

// transientCodes are server-side failures worth another attempt.
var transientCodes = map[string]bool{
	"InternalError": true, "InternalFailure": true, "ServiceUnavailable": true, "Unavailable": true,
}

// Throttled says whether err is EC2's throttling (RequestLimitExceeded and its kin): the account's bucket
// was empty, and the same call succeeds later.
func Throttled(err error) bool { return throttleCodes[ErrorCode(err)] }

// Transient says whether err is a failure of an AWS call (EC2's or IMDS's) that passes by itself: a
// throttle, a server error (EC2's transient codes, any 5xx), or no whole answer (a transport error, the
// SDK's own operation timeout, as when an overloaded IMDS does not answer a node's first reads in time, or a
// response body cut off, as when an overloaded EC2 endpoint closes the connection mid-answer).
// EC2's and IMDS's 4xx answers are final, and so is an error that is not an AWS call's.
func Transient(err error) bool {
	// EC2's errors carry the SDK's awshttp.ResponseError, IMDS's smithyhttp.ResponseError: both tell the status.
	var re interface{ HTTPStatusCode() int }
	hasResponse := errors.As(err, &re)
	if code := ErrorCode(err); code != "" {
		return throttleCodes[code] || transientCodes[code] || hasResponse && re.HTTPStatusCode() >= 500
	}
	var op *smithy.OperationError
	if !errors.As(err, &op) {
		return false
	}
	// No answer, a 5xx, or a 200 whose body was cut off: only a 4xx is the service's final word.
	return !hasResponse || re.HTTPStatusCode() < 400 || re.HTTPStatusCode() >= 500
}

// retryable: what Transient passes, and any failure with no EC2 error code (transport errors, a response cut
// off mid-body), but never the caller's own cancel or deadline. A 4xx with a code is EC2's answer and final.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	return ErrorCode(err) == "" || Transient(err)
}

func wrapAPI(err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return &APIError{Code: ae.ErrorCode(), Message: ae.ErrorMessage(), Err: err}
	}
	return err
}
