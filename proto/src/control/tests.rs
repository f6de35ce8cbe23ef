//! A simulated opener/acceptor pair: messages carried by hand, time passed in.

use std::time::{Duration, Instant};

use super::*;
use crate::pb::admin::{AdminRequest, AdminResponse};
use crate::pb::v1::{GatewayDirective, GatewayReport, Push};

const SETUP: Duration = Duration::from_secs(30);

fn acceptor(channel: Channel, now: Instant) -> Acceptor {
    Acceptor::new(channel, "g-1", "outpost-server test", now, SETUP)
}

/// Carries everything the opener wants to say to the acceptor and back, until both are quiet.
fn pump(o: &mut Opener, a: &mut Acceptor) -> (Vec<ControlError>, Vec<ControlError>) {
    let (mut oe, mut ae) = (vec![], vec![]);
    loop {
        let mut moved = false;
        while let Some(m) = o.poll_transmit() {
            moved = true;
            if let Err(e) = a.handle_message(m, 42) {
                ae.push(e);
            }
        }
        while let Some(m) = a.poll_transmit() {
            moved = true;
            if let Err(e) = o.handle_message(m) {
                oe.push(e);
            }
        }
        if !moved {
            return (oe, ae);
        }
    }
}

#[test]
fn s2_uplink_hello_then_reports_up_and_directives_down() {
    let now = Instant::now();
    let mut o = Opener::new(Channel::Uplink, "outpost-gateway test");
    let mut a = acceptor(Channel::Uplink, now);
    assert!(a.poll_timeout().is_some());
    let (oe, ae) = pump(&mut o, &mut a);
    assert!(oe.is_empty() && ae.is_empty(), "{oe:?} {ae:?}");
    assert!(o.is_open() && a.is_open());
    assert_eq!(a.poll_timeout(), None, "no deadline once open");
    match a.poll_event() {
        Some(AcceptorEvent::Established { version, hello }) => {
            assert_eq!(version, crate::version::PROTOCOL_VERSION);
            assert_eq!(hello.role, Role::Gateway as i32);
        }
        other => panic!("{other:?}"),
    }
    match o.poll_event() {
        Some(OpenerEvent::Established { device_id, .. }) => assert_eq!(device_id, "g-1"),
        other => panic!("{other:?}"),
    }
    o.send(Msg::GatewayReport(GatewayReport {
        agents_connected: 3,
        ..Default::default()
    }))
    .unwrap();
    a.send(Msg::GatewayDirective(GatewayDirective::default()))
        .unwrap();
    let (oe, ae) = pump(&mut o, &mut a);
    assert!(oe.is_empty() && ae.is_empty());
    assert!(matches!(
        a.poll_event(),
        Some(AcceptorEvent::Message(m)) if matches!(&*m, Msg::GatewayReport(r) if r.agents_connected == 3)
    ));
    assert!(matches!(
        o.poll_event(),
        Some(OpenerEvent::Message(m)) if matches!(*m, Msg::GatewayDirective(_))
    ));
}

#[test]
fn s2_admin_request_pipelined_behind_the_hello() {
    let mut o = Opener::new(Channel::Admin, "outpost-admin test");
    o.send(Msg::AdminRequest(AdminRequest::default())).unwrap();
    let mut a = acceptor(Channel::Admin, Instant::now());
    pump(&mut o, &mut a);
    assert!(matches!(
        a.poll_event(),
        Some(AcceptorEvent::Established { .. })
    ));
    assert!(matches!(
        a.poll_event(),
        Some(AcceptorEvent::Message(m)) if matches!(*m, Msg::AdminRequest(_))
    ));
    a.send(Msg::AdminResponse(AdminResponse::default()))
        .unwrap();
    pump(&mut o, &mut a);
    assert!(matches!(
        o.poll_event(),
        Some(OpenerEvent::Established { .. })
    ));
    assert!(matches!(
        o.poll_event(),
        Some(OpenerEvent::Message(m)) if matches!(*m, Msg::AdminResponse(_))
    ));
}

#[test]
fn s2_wrong_role_is_refused_naming_both() {
    // An admin hello on an uplink control stream.
    let mut o = Opener::new(Channel::Admin, "x");
    let mut a = acceptor(Channel::Uplink, Instant::now());
    let (oe, ae) = pump(&mut o, &mut a);
    assert!(matches!(ae.as_slice(), [ControlError::WrongRole { .. }]));
    match oe.as_slice() {
        [ControlError::Refused(r)] => {
            assert_eq!(r.code(), RefusalCode::WrongRole);
            assert!(
                r.0.message.contains("Gateway") && r.0.message.contains("Admin"),
                "{r}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(a.is_closed());
}

#[test]
fn s2_unsupported_version_is_refused_with_both_ranges() {
    let mut a = acceptor(Channel::Uplink, Instant::now());
    let mut hello = crate::session::hello(Role::Gateway, "future", &[]);
    hello.min_version = 90;
    hello.max_version = 99;
    let e = a.handle_message(Msg::Hello(hello), 0).unwrap_err();
    assert!(matches!(e, ControlError::Version(_)));
    match a.poll_transmit() {
        Some(Msg::Refusal(r)) => {
            assert_eq!(r.code, RefusalCode::UnsupportedVersion as i32);
            assert!(
                r.message.contains("90") && r.message.contains("99"),
                "{}",
                r.message
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn s2_messages_out_of_place_are_refused() {
    // A report before the hello.
    let mut a = acceptor(Channel::Uplink, Instant::now());
    let e = a
        .handle_message(Msg::GatewayReport(GatewayReport::default()), 0)
        .unwrap_err();
    assert!(
        matches!(
            e,
            ControlError::Unexpected {
                got: "GatewayReport",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(matches!(a.poll_transmit(), Some(Msg::Refusal(_))));
    // A push (a session message) on an uplink control stream after the hello.
    let mut o = Opener::new(Channel::Uplink, "gw");
    let mut a = acceptor(Channel::Uplink, Instant::now());
    pump(&mut o, &mut a);
    assert!(a.handle_message(Msg::Push(Push::default()), 0).is_err());
    assert!(a.is_closed());
    // Anything after close is unexpected too.
    assert!(
        a.handle_message(Msg::GatewayReport(GatewayReport::default()), 0)
            .is_err()
    );
    // The application cannot send what the channel does not carry.
    let mut a = acceptor(Channel::Admin, Instant::now());
    assert!(
        a.send(Msg::AdminResponse(AdminResponse::default()))
            .is_err(),
        "not open yet"
    );
    let mut o = Opener::new(Channel::Admin, "x");
    assert!(
        o.send(Msg::GatewayReport(GatewayReport::default()))
            .is_err()
    );
    pump(&mut o, &mut a);
    assert!(
        a.send(Msg::GatewayDirective(GatewayDirective::default()))
            .is_err()
    );
}

#[test]
fn s2_hello_must_arrive_within_the_setup_timeout() {
    let t0 = Instant::now();
    let mut a = acceptor(Channel::Admin, t0);
    assert_eq!(a.poll_timeout(), Some(t0 + SETUP));
    a.handle_timeout(t0 + SETUP - Duration::from_millis(1))
        .unwrap();
    let e = a.handle_timeout(t0 + SETUP).unwrap_err();
    assert!(matches!(e, ControlError::Timeout(_)));
    assert!(matches!(
        a.poll_transmit(),
        Some(Msg::Refusal(r)) if r.code == RefusalCode::Timeout as i32
    ));
}

#[test]
fn s2_refusal_from_the_peer_ends_either_side_without_an_answer() {
    let mut o = Opener::new(Channel::Uplink, "gw");
    o.poll_transmit();
    let r = Refused::new(RefusalCode::Overloaded, "busy").with_retry_after(Duration::from_secs(3));
    let e = o.handle_message(Msg::Refusal(r.0.clone())).unwrap_err();
    assert_eq!(e, ControlError::Refused(r.clone()));
    assert!(o.poll_transmit().is_none(), "no refusal answers a refusal");
    let mut a = acceptor(Channel::Uplink, Instant::now());
    assert!(a.handle_message(Msg::Refusal(r.0), 0).is_err());
    assert!(a.poll_transmit().is_none());
    assert!(a.is_closed());
}

#[test]
fn s2_acceptor_refuse_queues_one_refusal() {
    let mut o = Opener::new(Channel::Uplink, "gw");
    let mut a = acceptor(Channel::Uplink, Instant::now());
    pump(&mut o, &mut a);
    a.refuse(Refused::new(RefusalCode::ShuttingDown, "restarting"));
    a.refuse(Refused::new(RefusalCode::ShuttingDown, "again"));
    let (oe, _) = pump(&mut o, &mut a);
    assert_eq!(oe.len(), 1);
    assert!(matches!(&oe[0], ControlError::Refused(r) if r.code() == RefusalCode::ShuttingDown));
}

#[test]
fn s2_opener_refuses_an_unknown_version_in_the_ack() {
    let mut o = Opener::new(Channel::Uplink, "gw");
    o.poll_transmit();
    let e = o
        .handle_message(Msg::HelloAck(HelloAck {
            version: 99,
            ..Default::default()
        }))
        .unwrap_err();
    assert!(matches!(e, ControlError::Version(_)));
    assert!(matches!(o.poll_transmit(), Some(Msg::Refusal(_))));
}

#[test]
fn s2_broken_stream_before_hello_is_refused() {
    let mut a = acceptor(Channel::Uplink, Instant::now());
    let e = a.handle_broken(Some("frame of 9999999 bytes exceeds the maximum".into()));
    assert!(matches!(e, ControlError::Malformed { .. }));
    assert!(matches!(
        a.poll_transmit(),
        Some(Msg::Refusal(r)) if r.code == RefusalCode::Malformed as i32
    ));
    let mut a = acceptor(Channel::Admin, Instant::now());
    let e = a.handle_broken(None);
    assert!(e.to_string().contains("waiting for Hello"), "{e}");
    assert!(a.is_closed());
}

#[test]
fn s9_gateway_renews_over_the_uplink_control_stream_only() {
    use crate::pb::v1::{CertRenewal, CertRenewed};
    let now = Instant::now();
    let mut o = Opener::new(Channel::Uplink, "outpost-gateway test");
    let mut a = acceptor(Channel::Uplink, now);
    pump(&mut o, &mut a);
    while a.poll_event().is_some() {}
    while o.poll_event().is_some() {}
    o.send(Msg::CertRenewal(CertRenewal { csr_der: vec![1] }))
        .unwrap();
    a.send(Msg::CertRenewed(CertRenewed::default())).unwrap();
    let (oe, ae) = pump(&mut o, &mut a);
    assert!(oe.is_empty() && ae.is_empty(), "{oe:?} {ae:?}");
    assert!(matches!(
        a.poll_event(),
        Some(AcceptorEvent::Message(m)) if matches!(&*m, Msg::CertRenewal(r) if r.csr_der == [1])
    ));
    assert!(matches!(
        o.poll_event(),
        Some(OpenerEvent::Message(m)) if matches!(*m, Msg::CertRenewed(_))
    ));
    // Not on admin streams, and never the other way round.
    assert!(!Channel::Admin.opener_may_send(&Msg::CertRenewal(CertRenewal::default())));
    assert!(!Channel::Uplink.acceptor_may_send(&Msg::CertRenewal(CertRenewal::default())));
    assert!(!Channel::Uplink.opener_may_send(&Msg::CertRenewed(CertRenewed::default())));
}
