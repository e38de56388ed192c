package web

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are a server's Prometheus metrics, in a registry of their own.
// Create them before the broker so that its fan-out timings reach them
// (broker.Config.OnFanout = m.ObserveFanout), then pass them in Config.
type Metrics struct {
	registry        *prometheus.Registry
	connections     *prometheus.GaugeVec   // by transport (ws, sse)
	connects        *prometheus.CounterVec // by transport
	joins           prometheus.Counter
	published       *prometheus.CounterVec
	framesWritten   prometheus.Counter
	writes          prometheus.Counter
	bytesWritten    prometheus.Counter
	slowConsumers   prometheus.Counter
	errors          *prometheus.CounterVec
	upgradesRefused *prometheus.CounterVec // by reason
	fanout          prometheus.Histogram
}

// NewMetrics returns a fresh set of metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "groupcast_connections", Help: "Open connections, by transport (ws: WebSocket, sse: Server-Sent Events).",
		}, []string{"transport"}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupcast_connects_total", Help: "Connections accepted, by transport (ws, sse).",
		}, []string{"transport"}),
		joins: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupcast_joins_total", Help: "Successful group joins.",
		}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupcast_published_total", Help: "Messages published, by source (api, client).",
		}, []string{"source"}),
		framesWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupcast_frames_written_total", Help: "Server frames (JSON objects) written to connections.",
		}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupcast_writes_total", Help: "Writes to connections (WebSocket messages, batches of SSE events); frames_written/writes is the batching factor.",
		}),
		bytesWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupcast_bytes_written_total", Help: "Payload bytes written to connections.",
		}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupcast_slow_consumer_closes_total", Help: "Connections closed because their outbox overflowed.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupcast_errors_total", Help: "Refusals sent to clients and API callers, by code.",
		}, []string{"code"}),
		upgradesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupcast_upgrades_refused_total", Help: "WebSocket upgrades refused, by reason (unauthorized, forbidden, origin, handshake_rate, ip_connections, unavailable, handshake, ...).",
		}, []string{"reason"}),
		fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groupcast_fanout_seconds",
			Help:    "Time to hand one group message (or several that queued up, together) to every member on this instance.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 11), // 1µs to 1s
		}),
	}
	for _, t := range []string{transportWS, transportSSE} { // shown at 0 before the first
		m.connections.WithLabelValues(t)
		m.connects.WithLabelValues(t)
	}
	m.registry.MustRegister(m.connections, m.connects, m.joins, m.published, m.framesWritten, m.writes,
		m.bytesWritten, m.slowConsumers, m.errors, m.upgradesRefused, m.fanout,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveFanout records one local fan-out (a group message, or several
// that queued up, together); it fits
// broker.Config.OnFanout.
func (m *Metrics) ObserveFanout(_ int, took time.Duration) { m.fanout.Observe(took.Seconds()) }

var (
	descGroups     = prometheus.NewDesc("groupcast_groups", "Groups with members on this instance (one NATS subscription each).", nil, nil)
	descReceived   = prometheus.NewDesc("groupcast_nats_received_total", "Messages received from NATS.", nil, nil)
	descDelivered  = prometheus.NewDesc("groupcast_deliveries_total", "Messages handed to connections' outboxes.", nil, nil)
	descInvalid    = prometheus.NewDesc("groupcast_nats_invalid_total", "Messages from NATS dropped for not being JSON.", nil, nil)
	descSlowNATS   = prometheus.NewDesc("groupcast_nats_slow_consumer_total", "Times NATS dropped messages for this instance.", nil, nil)
	descConnected  = prometheus.NewDesc("groupcast_nats_connected", "1 while connected to NATS.", nil, nil)
	descReconnects = prometheus.NewDesc("groupcast_nats_reconnects_total", "NATS reconnections.", nil, nil)
)

// brokerCollector reads the broker's counters at scrape time.
type brokerCollector struct{ b Broker }

func (c brokerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGroups, descReceived, descDelivered, descInvalid, descSlowNATS, descConnected, descReconnects} {
		ch <- d
	}
}

func (c brokerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.Stats()
	connected := 0.0
	if s.NATSConnected {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(descGroups, prometheus.GaugeValue, float64(s.Groups))
	ch <- prometheus.MustNewConstMetric(descReceived, prometheus.CounterValue, float64(s.Received))
	ch <- prometheus.MustNewConstMetric(descDelivered, prometheus.CounterValue, float64(s.Delivered))
	ch <- prometheus.MustNewConstMetric(descInvalid, prometheus.CounterValue, float64(s.Invalid))
	ch <- prometheus.MustNewConstMetric(descSlowNATS, prometheus.CounterValue, float64(s.SlowConsumer))
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, connected)
	ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(s.Reconnects))
}
