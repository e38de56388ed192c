package infra

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	"github.com/nats-io/nats-server/v2/server"
)

// GatewayStats is what one nats-server has sent to other regions and received from
// them, read from its monitoring data (what /gatewayz and /accstatz serve).
type GatewayStats struct {
	// OutMsgs holds, per remote region, the messages the server sent on its outbound
	// gateway connection to that region: every account's, nats-server's own events in
	// the system account included.
	OutMsgs map[string]int64
	// Sent and Received hold, per account asked for, the messages of that account the
	// server sent to gateways and received from them, all regions together.
	Sent, Received map[string]int64
}

// ReadGatewayStats reads s's gateway counters, with the per-account counts of accounts.
func ReadGatewayStats(s *server.Server, accounts ...string) (GatewayStats, error) {
	gz, err := s.Gatewayz(nil)
	if err != nil {
		return GatewayStats{}, err
	}
	az, err := s.AccountStatz(&server.AccountStatzOptions{Accounts: accounts, IncludeUnused: true})
	if err != nil {
		return GatewayStats{}, err
	}
	return gatewayStats(gz, az, accounts)
}

// FetchGatewayStats is ReadGatewayStats for a server in another process, through its
// monitoring endpoint (http://host:8222).
func FetchGatewayStats(ctx context.Context, monitorURL string, accounts ...string) (GatewayStats, error) {
	var gz server.Gatewayz
	var az server.AccountStatz
	if err := FetchJSON(ctx, monitorURL+"/gatewayz", &gz); err != nil {
		return GatewayStats{}, err
	}
	if err := FetchJSON(ctx, monitorURL+"/accstatz?unused=1", &az); err != nil {
		return GatewayStats{}, err
	}
	return gatewayStats(&gz, &az, accounts)
}

func gatewayStats(gz *server.Gatewayz, az *server.AccountStatz, accounts []string) (GatewayStats, error) {
	st := GatewayStats{OutMsgs: map[string]int64{}, Sent: map[string]int64{}, Received: map[string]int64{}}
	for region, rg := range gz.OutboundGateways {
		if rg.Connection != nil {
			st.OutMsgs[region] = rg.Connection.OutMsgs
		}
	}
	found := map[string]bool{}
	for _, a := range az.Accounts {
		if !slices.Contains(accounts, a.Account) {
			continue
		}
		found[a.Account] = true
		if a.Sent.Gateways != nil {
			st.Sent[a.Account] = a.Sent.Gateways.Msgs
		}
		if a.Received.Gateways != nil {
			st.Received[a.Account] = a.Received.Gateways.Msgs
		}
	}
	for _, acc := range accounts {
		if !found[acc] {
			return st, fmt.Errorf("server %s: no account %q", az.ID, acc)
		}
	}
	return st, nil
}

// FetchJSON decodes the JSON document at url, such as a nats-server monitoring
// endpoint, into v.
func FetchJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// GatewayModes returns, per remote region, the interest mode of account on s's
// outbound gateway to it: "Interest-Only" when s sends that region only the messages
// it has subscriptions for, "Optimistic" or "Transitioning" while s sends every
// message the region has not refused. A region missing from the map has no entry for
// the account yet.
func GatewayModes(s *server.Server, account string) (map[string]string, error) {
	gz, err := s.Gatewayz(&server.GatewayzOptions{AccountName: account})
	if err != nil {
		return nil, err
	}
	modes := map[string]string{}
	for region, rg := range gz.OutboundGateways {
		for _, a := range rg.Accounts {
			if a.Name == account {
				modes[region] = a.InterestMode
			}
		}
	}
	return modes, nil
}

// GatewayInterest reports whether s's outbound gateway to region holds a subscription
// of account that matches subject, which is what makes s send such a message there
// in interest-only mode.
func GatewayInterest(s *server.Server, region, account, subject string) (bool, error) {
	gz, err := s.Gatewayz(&server.GatewayzOptions{Name: region, AccountName: account, AccountSubscriptions: true})
	if err != nil {
		return false, err
	}
	rg := gz.OutboundGateways[region]
	if rg == nil {
		return false, nil
	}
	for _, a := range rg.Accounts {
		if a.Name != account {
			continue
		}
		for _, sub := range a.Subs {
			if server.SubjectMatchesFilter(subject, sub) {
				return true, nil
			}
		}
	}
	return false, nil
}
