package proxy

import (
	"io"
	"net/http"
	"testing"

	"github.com/modbot/modbot/fsm"
)

// BenchmarkDashboard measures a forwarded GET /guild/{id}/dashboard through
// the proxy (client, proxy and backend in this process).
func BenchmarkDashboard(b *testing.B) {
	e := newEnv(b, nil)
	be := newBackend(b, "gateway-0", nil)
	e.m.addPod("gateway-0", 0, be.addr(), fsm.PodActive)
	e.m.place(42, "gateway-0", fsm.GuildActive)
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodGet, e.url+"/guild/42/dashboard", nil)
			req.Header.Set("Accept", "application/json")
			req.Header.Set("Authorization", "Bearer "+testAdminToken)
			resp, err := hc.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
