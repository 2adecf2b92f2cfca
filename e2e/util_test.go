package e2e

import (
	"net/http"
	"time"
)

var httpc = &http.Client{Timeout: 5 * time.Second}

func httpGet(url string) (int, error) {
	resp, err := httpc.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
