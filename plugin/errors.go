package plugin

import (
	"errors"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/ipam/api"
)

// cniError turns an error of a verb into the *types.Error the runtime sees: the one place where errors get
// their CNI codes. A *types.Error (config, CNI_ARGS, netns: 7, 8, 11, 50, ...) keeps its code; any other
// error gets the code api.CNICode finds for it in api's table of errors (7, 11, 100-103), 999 when none.
// STATUS reports its own codes (50) before it gets here; DEL never returns api.ErrUnavailable (it journals
// the release).
func cniError(err error) error {
	if err == nil {
		return nil
	}
	var e *types.Error
	if errors.As(err, &e) {
		if e == err {
			return e
		}
		// Keep the code, and the message with its context (which includes the details).
		return types.NewError(e.Code, err.Error(), "")
	}
	return types.NewError(api.CNICode(err), err.Error(), "")
}
