//! The local AWS server harness: a `MotoServer` answers Kinesis calls on loopback, and dropping it
//! frees its port. Raw HTTP only, so that this test does not depend on an AWS SDK.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use pageflow_tests::aws::{self, HttpResponse, MotoServer};

/// One Kinesis JSON API call, signed with a dummy SigV4-shaped header (moto routes on its scope).
fn kinesis(server: &MotoServer, action: &str, body: &str) -> HttpResponse {
    let target = format!("Kinesis_20131202.{action}");
    let authorization = aws::dummy_sigv4_authorization("kinesis");
    let headers = [
        ("Content-Type", "application/x-amz-json-1.1"),
        ("X-Amz-Target", target.as_str()),
        ("X-Amz-Date", "20250101T000000Z"),
        ("Authorization", authorization.as_str()),
    ];
    let response = aws::http_request(server.port(), "POST", "/", &headers, body.as_bytes())
        .unwrap_or_else(|e| panic!("{action}: {e}"));
    assert_eq!(
        response.status,
        200,
        "{action} answered {}: {}\nserver output:\n{}",
        response.status,
        response.text(),
        server.output()
    );
    response
}

#[test]
fn moto_serves_kinesis_and_frees_its_port_when_dropped() {
    let started = Instant::now();
    let server = MotoServer::start().unwrap();
    eprintln!(
        "moto ready at {} after {:?}",
        server.endpoint,
        started.elapsed()
    );
    let port = server.port();
    assert_eq!(server.endpoint, format!("http://127.0.0.1:{port}"));

    let env = server.env();
    let value = |name: &str| {
        env.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(value("AWS_ENDPOINT_URL"), Some(server.endpoint.as_str()));
    assert_eq!(value("AWS_ACCESS_KEY_ID"), Some("testing"));
    assert_eq!(value("AWS_SECRET_ACCESS_KEY"), Some("testing"));
    assert_eq!(value("AWS_REGION"), Some("us-east-1"));

    kinesis(
        &server,
        "CreateStream",
        r#"{"StreamName":"smoke","ShardCount":1}"#,
    );
    let listed = kinesis(&server, "ListStreams", "{}").text();
    assert!(
        listed.contains(r#""StreamNames": ["smoke"]"#),
        "ListStreams: {listed}"
    );

    drop(server);

    // The process has been killed and reaped, so its socket is closed: connections are refused.
    // Bounded retries rather than one try, in case the kernel is slow to tear the socket down.
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            Err(_) => break,
            Ok(_) if Instant::now() >= deadline => {
                panic!("port {port} still accepts connections 10 s after the server was dropped")
            }
            Ok(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn servers_of_parallel_tests_get_their_own_ports() {
    let first = MotoServer::start().unwrap();
    let second = MotoServer::start().unwrap();
    assert_ne!(first.port(), second.port());

    kinesis(
        &first,
        "CreateStream",
        r#"{"StreamName":"only-in-first","ShardCount":1}"#,
    );
    let listed = kinesis(&second, "ListStreams", "{}").text();
    assert!(
        !listed.contains("only-in-first"),
        "the second server sees the first's stream: {listed}"
    );
}
