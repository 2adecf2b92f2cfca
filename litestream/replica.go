package litestream

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	ls "github.com/benbjohnson/litestream"
	lsfile "github.com/benbjohnson/litestream/file"
	lss3 "github.com/benbjohnson/litestream/s3"
)

// ErrBadReplicaURL is returned (wrapped) for a replica URL this package
// cannot use.
var ErrBadReplicaURL = errors.New("bad replica URL")

// ReplicaDescription is a parsed replica URL, for logs.
type ReplicaDescription struct {
	Scheme   string // "file" or "s3"
	Path     string // file: the directory
	Bucket   string // s3
	Prefix   string // s3: key prefix
	Endpoint string // s3: custom endpoint (path-style), empty for AWS
	Region   string
}

func badURL(raw, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s (want file:///ABSOLUTE/DIR or s3://BUCKET/PATH?endpoint=http://HOST:PORT&region=REGION)",
		ErrBadReplicaURL, raw, fmt.Sprintf(format, args...))
}

// NewReplicaClient validates a replica URL and returns Litestream's client for
// it: file:///DIR or s3://BUCKET/PATH[?endpoint=…&region=…]. With an
// endpoint the S3 client uses path-style addressing. Credentials come from
// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or LITESTREAM_*).
func NewReplicaClient(raw string) (ls.ReplicaClient, ReplicaDescription, error) {
	var d ReplicaDescription
	if strings.TrimSpace(raw) == "" {
		return nil, d, badURL(raw, "empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, d, badURL(raw, "%v", err)
	}
	d.Scheme = u.Scheme
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, d, badURL(raw, "a file URL names a local directory: file:///ABSOLUTE/DIR (three slashes), not host %q", u.Host)
		}
		if u.RawQuery != "" {
			return nil, d, badURL(raw, "a file URL takes no query parameters")
		}
		p := filepath.Clean(u.Path)
		if u.Path == "" || !filepath.IsAbs(p) || p == "/" {
			return nil, d, badURL(raw, "the directory must be an absolute path other than /")
		}
		d.Path = p
		return lsfile.NewReplicaClient(p), d, nil
	case "s3":
		if u.Host == "" {
			return nil, d, badURL(raw, "missing bucket")
		}
		if u.User != nil {
			return nil, d, badURL(raw, "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
		}
		q := u.Query()
		for k := range q {
			switch k {
			case "endpoint", "region", "forcePathStyle", "force-path-style", "skipVerify", "skip-verify":
			default:
				return nil, d, badURL(raw, "unknown query parameter %q (known: endpoint, region, forcePathStyle, skipVerify)", k)
			}
		}
		if ep := q.Get("endpoint"); ep != "" {
			eu, err := url.Parse(ep)
			if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
				return nil, d, badURL(raw, "endpoint %q must be an http:// or https:// URL with a host", ep)
			}
			d.Endpoint = ep
		}
		d.Bucket = u.Host
		d.Prefix = strings.Trim(u.Path, "/")
		if d.Prefix == "" {
			return nil, d, badURL(raw, "missing path inside the bucket (one database per path): s3://%s/PATH", u.Host)
		}
		d.Region = q.Get("region")
		c, err := lss3.NewReplicaClientFromURL("s3", u.Host, d.Prefix, q, nil)
		if err != nil {
			return nil, d, badURL(raw, "%v", err)
		}
		sc := c.(*lss3.ReplicaClient)
		if sc.Region == "" {
			sc.Region = lss3.DefaultRegion
		}
		d.Region = sc.Region
		return sc, d, nil
	case "":
		return nil, d, badURL(raw, "missing scheme")
	default:
		return nil, d, badURL(raw, "unsupported scheme %q", u.Scheme)
	}
}
