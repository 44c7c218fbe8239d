//! Wire contracts of Keelson: the subset of etcd's v3 API (packages `etcdserverpb` and `mvccpb`,
//! with etcd's names and field numbers so that etcd clients interoperate). Keelson's members
//! speak their own framed protocol to each other (see `raft_store::network`).

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
