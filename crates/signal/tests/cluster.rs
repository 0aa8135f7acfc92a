//! hermes-signal on Redis Cluster (`redis-cluster://`, [`hermes_testkit::ClusterSet`]: three real
//! primaries, three replicas). Every key a signal script touches carries the call's hash tag, so
//! each script runs on the one primary that owns the call's slot; the call channel still uses
//! classic PUBLISH/SUBSCRIBE, which a cluster broadcasts to every node, so a replica's
//! subscription on any node hears every call (correct, but the fan-out does not shard: see
//! docs/operations.md, "Redis Cluster").
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hermes_proto::signal::{CLOSE_CALL_ENDED, ClientMessage, ServerMessage};
use hermes_proto::{CallId, JoinTokenKeys, Role, keys};
use hermes_testkit::ClusterSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_two_replicas_relays_resumes_and_ends_on_a_cluster() {
    let cluster = tokio::task::block_in_place(ClusterSet::start);
    let url = cluster.url();
    let r1 = Replica::start(&url, &["--grace-ms", "30000"]).await;
    let r2 = Replica::start(&url, &["--grace-ms", "30000"]).await;

    // Calls whose slots live on different primaries: each call's scripts run on its own.
    let mut owners = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let id = CallId::random(&mut rand::rng());
        let record = keys::call(&id);
        cluster
            .raw_for_key(
                &record,
                &format!(
                    "HSET {record} status created createdAt {}",
                    hermes_service::unix_now()
                ),
            )
            .unwrap();
        owners.insert(cluster.owner_of(&record).unwrap());
        let call = Call {
            id,
            keys: JoinTokenKeys::new(SECRET.as_bytes()),
        };
        let (pa, ta) = call.token(Role::Offerer);
        let (pb, tb) = call.token(Role::Answerer);
        let (mut a, _) = Client::join(&r1.url(), &ta, None).await;
        let (mut b, _) = Client::join(&r2.url(), &tb, None).await;
        assert!(matches!(
            a.recv().await,
            ServerMessage::PeerJoined { ref participant_id, .. } if *participant_id == pb
        ));

        a.send(&ClientMessage::Offer {
            sdp: "v=0 o".into(),
        })
        .await;
        let offer = b.recv().await;
        assert!(
            matches!(offer, ServerMessage::Offer { ref from, .. } if *from == pa),
            "{offer:?}"
        );
        b.send(&ClientMessage::Answer {
            sdp: "v=0 a".into(),
        })
        .await;
        assert!(matches!(a.recv().await, ServerMessage::Answer { .. }));

        // b drops; what a sends meanwhile is replayed when b resumes on the other replica.
        let last = seq_of(&offer);
        b.drop_abruptly();
        a.recv_until(|m| matches!(m, ServerMessage::PeerReconnecting { .. }))
            .await;
        for i in 0..3 {
            a.send(&candidate(i)).await;
        }
        let (mut b, joined) = Client::join(&r1.url(), &tb, Some(last)).await;
        assert!(
            matches!(joined, ServerMessage::Joined { resumed: true, .. }),
            "{joined:?}"
        );
        for i in 0..3 {
            let m = b.recv().await;
            assert_eq!(candidate_index(&m), i, "{m:?}");
        }
        a.recv_until(|m| matches!(m, ServerMessage::PeerResumed { .. }))
            .await;

        a.send(&ClientMessage::Hangup).await;
        for c in [&mut a, &mut b] {
            let (seen, closed) = c.closed().await;
            assert!(
                seen.iter()
                    .any(|m| matches!(m, ServerMessage::CallEnded { .. })),
                "{seen:?}"
            );
            assert_eq!(closed, Closed::Code(CLOSE_CALL_ENDED));
        }
    }
    eprintln!("calls on primaries {owners:?}");
}
