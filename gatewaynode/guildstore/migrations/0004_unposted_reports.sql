-- Reports whose mod-log post is not acknowledged yet: the pod's poster
-- retries them until they land (gatewaynode/effects.go).
CREATE INDEX reports_unposted ON reports (guild_id, id)
    WHERE modlog_posted_at IS NULL AND modlog_channel_id IS NOT NULL AND modlog_channel_id != 0;
