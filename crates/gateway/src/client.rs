//! Who is at the other end of the connection: the client's address and whether it came over
//! HTTPS, as the trusted proxies in front of the gateway (`CIM_GATEWAY_PROXY_HOPS`) report it.
//!
//! Each proxy appends the address it saw to `X-Forwarded-For`, so with `hops` trusted proxies
//! the client is the `hops`-th entry from the end; entries before it are whatever the client
//! wrote and are never believed. Without proxies the peer address is the client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};

/// How many proxies in front are trusted, and whether the gateway's own listener is TLS.
#[derive(Debug, Clone, Copy)]
pub struct Proxies {
    pub hops: usize,
    /// The gateway terminates TLS itself (`CIM_TLS_CERT_FILE`).
    pub tls: bool,
}

impl Proxies {
    /// The client's address; the unspecified address when the request has no peer (a router
    /// driven without a listener, as in benchmarks).
    pub fn client<B>(self, req: &Request<B>) -> IpAddr {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        self.address_in(req.headers(), peer)
    }

    fn address_in(self, headers: &HeaderMap, peer: Option<IpAddr>) -> IpAddr {
        let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if self.hops == 0 {
            return peer;
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // The last proxy's own peer is the last entry's sender; the client is `hops` back.
        forwarded.len().checked_sub(self.hops).and_then(|i| forwarded[i].parse().ok()).unwrap_or(peer)
    }

    /// Whether the client's request came over HTTPS: the gateway's own listener says so when no
    /// proxy is in front; otherwise only a trusted proxy can (the hop to it may be TLS while the
    /// client's was not).
    pub fn https(self, headers: &HeaderMap) -> bool {
        if self.hops == 0 {
            return self.tls;
        }
        headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next_back())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_trusted_hops_of_x_forwarded_for_are_believed() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]);
        assert_eq!(Proxies { hops: 0, tls: false }.address_in(&spoofed, Some(peer)), peer);
        assert_eq!(
            Proxies { hops: 1, tls: false }.address_in(&spoofed, Some(peer)),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            Proxies { hops: 2, tls: false }.address_in(&spoofed, Some(peer)),
            "6.6.6.6".parse::<IpAddr>().unwrap()
        );
        // Fewer entries than trusted hops, or garbage: the peer.
        assert_eq!(Proxies { hops: 3, tls: false }.address_in(&spoofed, Some(peer)), peer);
        let junk = headers(&[("x-forwarded-for", "nonsense")]);
        assert_eq!(Proxies { hops: 1, tls: false }.address_in(&junk, Some(peer)), peer);
        let https = headers(&[("x-forwarded-proto", "https")]);
        assert!(Proxies { hops: 1, tls: false }.https(&https));
        assert!(!Proxies { hops: 0, tls: false }.https(&https), "a client cannot claim HTTPS itself");
        assert!(Proxies { hops: 0, tls: true }.https(&HeaderMap::new()), "the gateway's own TLS listener");
        let plain = headers(&[("x-forwarded-proto", "http")]);
        assert!(!Proxies { hops: 1, tls: true }.https(&plain), "TLS to the gateway, plain HTTP to the proxy");
    }
}
