package fakeec2

import (
	"fmt"
	"net/http"
)

// apiError is an EC2 error as the client sees it.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// statusFor gives the HTTP status EC2 uses for a code: most are 400.
func statusFor(code string) int {
	switch code {
	case "UnauthorizedOperation", "AuthFailure":
		return http.StatusForbidden
	case "RequestLimitExceeded", "Unavailable", "ServiceUnavailable":
		return http.StatusServiceUnavailable
	case "InternalError", "InternalFailure":
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

func newErr(code, format string, args ...any) *apiError {
	return &apiError{Status: statusFor(code), Code: code, Message: fmt.Sprintf(format, args...)}
}

func errMissing(key string) *apiError {
	return newErr("MissingParameter", "The request must contain the parameter %s", key)
}

func errInvalidParam(format string, args ...any) *apiError {
	return newErr("InvalidParameterValue", format, args...)
}

func errENINotFound(id string) *apiError {
	return newErr("InvalidNetworkInterfaceID.NotFound", "The networkInterface ID '%s' does not exist", id)
}

func errAttachmentNotFound(id string) *apiError {
	return newErr("InvalidAttachmentID.NotFound", "The attachment ID '%s' does not exist", id)
}

func errSubnetNotFound(id string) *apiError {
	return newErr("InvalidSubnetID.NotFound", "The subnet ID '%s' does not exist", id)
}

func errInstanceNotFound(id string) *apiError {
	return newErr("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", id)
}

func errENIInUse(id string) *apiError {
	return errInvalidParam("Network interface '%s' is currently in use.", id)
}

func errIPLimit() *apiError {
	return newErr("PrivateIpAddressLimitExceeded", "Number of private addresses will exceed limit.")
}

// errIPv6Limit: EC2's error list has no IPv6-specific per-interface limit code; PrivateIpAddressLimitExceeded
// is the code for the per-interface, per-instance-type address limit, which EC2 applies to IPv6 too.
func errIPv6Limit() *apiError {
	return newErr("PrivateIpAddressLimitExceeded", "Number of IPv6 addresses will exceed limit.")
}

// errNoIPv6CIDR is EC2's answer to IPv6 in a subnet without an IPv6 block (as RunInstances and
// AssignIpv6Addresses word it).
func errNoIPv6CIDR() *apiError {
	return errInvalidParam("Subnet does not contain any IPv6 CIDR block ranges")
}

// errIPv6OneKind is EC2's answer to more than one of the four ways to ask for IPv6 in one request.
func errIPv6OneKind() *apiError {
	return errInvalidParam("You can specify one and only one of ipv6Address or ipv6AddressCount or ipv6Prefix or ipv6PrefixCount.")
}

func errNoFreeAddresses(subnet string) *apiError {
	return newErr("InsufficientFreeAddressesInSubnet", "The specified subnet %s does not have enough free addresses to satisfy the request.", subnet)
}

func errNoFreePrefixes(subnet string) *apiError {
	return newErr("InsufficientCidrBlocks", "The specified subnet %s does not have enough free cidr blocks to satisfy the request.", subnet)
}

// defaultMessage is used for injected errors without a message.
func defaultMessage(code string) string {
	switch code {
	case "RequestLimitExceeded":
		return "Request limit exceeded."
	case "UnauthorizedOperation":
		return "You are not authorized to perform this operation."
	case "InternalError":
		return "An internal error has occurred"
	}
	return "Injected fault: " + code
}
