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
