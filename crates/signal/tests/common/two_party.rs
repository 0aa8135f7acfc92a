//! The set-up most signal scenarios start from: a call with an offerer and an answerer both
//! joined, and the offerer's `peer-joined` for the answerer already read, so each test begins
//! with empty queues on both sides.

use hermes_proto::signal::ServerMessage;
use hermes_proto::{ParticipantId, Role};
use hermes_testkit::RedisServer;

use super::{Call, Client};

/// A joined offerer (`a`) and answerer (`b`) of one fresh call.
pub struct TwoParty {
    pub call: Call,
    /// The offerer's participant id, token and connection.
    pub pa: ParticipantId,
    pub ta: String,
    pub a: Client,
    /// The answerer's participant id, token and connection.
    pub pb: ParticipantId,
    pub tb: String,
    pub b: Client,
}

impl TwoParty {
    /// Create a call, join the offerer at `url_a`, then the answerer at `url_b`, and read the
    /// offerer's `peer-joined` for the answerer (asserted).
    pub async fn join(redis: &RedisServer, url_a: &str, url_b: &str) -> Self {
        let call = Call::create(redis);
        let (pa, ta) = call.token(Role::Offerer);
        let (pb, tb) = call.token(Role::Answerer);
        let (mut a, _) = Client::join(url_a, &ta, None).await;
        let (b, _) = Client::join(url_b, &tb, None).await;
        assert_eq!(
            a.recv().await,
            ServerMessage::PeerJoined {
                participant_id: pb.clone(),
                role: Role::Answerer
            }
        );
        Self {
            call,
            pa,
            ta,
            a,
            pb,
            tb,
            b,
        }
    }

    /// Both parties on the same replica.
    pub async fn join_one(redis: &RedisServer, url: &str) -> Self {
        Self::join(redis, url, url).await
    }
}
