//! Amazon Kinesis Data Streams: the job's source (every shard of every portal's stream) and the
//! features sink.
//!
//! | file | concept |
//! |------|---------|
//! | [`consumer`] | [`KinesisConsumer`]: the source. One coordinator discovers shards, starts a reader per shard (children only after their parents are fully read) and hands each shard to a worker as its own partition ([`ShardPartition`], a `RecordSource`) |
//! | [`polling_reader`] | [`ShardReader`]: one shard read with `GetShardIterator` + `GetRecords`; the batches, resume points and KPL unpacking both readers share |
//! | [`fan_out_reader`] | [`FanOutReader`]: one shard read with enhanced fan-out (`SubscribeToShard`), and the registration of the stream consumer |
//! | [`shard_discovery`] | `ListShards`, and the lineage that says which shards may be read now |
//! | [`shard_ownership`] | the consumer across the processes of a cluster: which process reads which shard ([`ConsumerPlacement`]), and how the others learn it is done ([`FinishedElsewhere`]) |
//! | [`shards`] | sequence numbers, positions, and the assignment of shards to workers |
//! | [`kpl`] | KPL aggregation: packing and unpacking many user records in one Kinesis record |
//! | [`sink`] | [`KinesisStream`]: the features stream with `PutRecords` (a [`crate::batch::BatchApi`]) |

pub mod consumer;
pub mod fan_out_reader;
pub mod kpl;
pub mod polling_reader;
pub mod shard_discovery;
pub mod shard_ownership;
pub mod shard_reader;
pub mod shards;
pub mod sink;

pub use consumer::{KinesisConsumer, ShardPartition};
pub use fan_out_reader::FanOutReader;
pub use polling_reader::PollingReader;
pub use shard_ownership::{ConsumerPlacement, FinishedElsewhere, NowhereElse};
pub use shard_reader::{ResumePoint, ShardBatch, ShardReader, ShardRecord, StartPosition};
pub use sink::KinesisStream;
