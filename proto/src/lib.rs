//! Wire contracts of Keelson: the subset of etcd's v3 API (packages `etcdserverpb` and `mvccpb`,
//! with etcd's names and field numbers so that etcd clients interoperate) and Keelson's own Raft
//! peer service.

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod raftpeer {
    tonic::include_proto!("keelson.raftpeer");
}
