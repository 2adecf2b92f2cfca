package litestream

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/aws/smithy-go"
)

// explainS3 adds an operator's hint to the errors object storage answers
// most often: a missing bucket, refused credentials, an unreachable endpoint.
func explainS3(err error) error {
	if err == nil {
		return nil
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "NoSuchBucket":
			return fmt.Errorf("%w (the bucket does not exist: create it, or fix the bucket in --replica)", err)
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken":
			return fmt.Errorf("%w (credentials refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)", err)
		}
	}
	var op *net.OpError
	if errors.Is(err, syscall.ECONNREFUSED) || (errors.As(err, &op) && op.Op == "dial") {
		return fmt.Errorf("%w (object storage unreachable: check the endpoint in --replica)", err)
	}
	return err
}
