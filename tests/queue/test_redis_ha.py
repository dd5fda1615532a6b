"""The Redis clients for Sentinel and Cluster: where the queue's shards live, and the health check on both."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from herald.config import Settings
from herald.queue import Job, make_queue
from herald.queue.health import redis_health
from herald.queue.keys import RedisKeys
from herald.queue.redis_client import connect
from tests.support.redis_ha import ClusterSet, SentinelSet

pytestmark = [pytest.mark.redis, pytest.mark.redis_ha]


def test_the_shards_spread_over_every_master_of_a_three_master_cluster(
    shared_cluster_set: ClusterSet,
) -> None:
    keys = RedisKeys("herald", 4)
    masters = {shared_cluster_set.owner(key_slot(shard.stream.encode()))[0] for shard in keys.by_index}
    assert len(masters) == 3


def test_health_check_reads_a_cluster_and_a_sentinel_master(
    shared_cluster_set: ClusterSet, shared_sentinel_set: SentinelSet
) -> None:
    cluster = Settings(queue_backend="redis", redis_url=shared_cluster_set.url(), redis_cluster=True)
    env = shared_sentinel_set.env()
    sentinel = Settings(
        queue_backend="redis",
        redis_sentinels=env["HERALD_REDIS_SENTINELS"],
        redis_sentinel_master=shared_sentinel_set.master_name,
        redis_sentinel_password=shared_sentinel_set.sentinel_password,
        redis_password=shared_sentinel_set.password,
    )
    for settings in (cluster, sentinel):
        client = connect(settings)
        try:
            assert redis_health(client) == []  # 40-character password, appendonly yes, noeviction
        finally:
            client.close()


def test_a_sentinel_client_finds_the_master(shared_sentinel_set: SentinelSet) -> None:
    settings = shared_sentinel_set.settings("sentinel-find")
    with make_queue(settings) as queue:
        queue.enqueue(job := Job.new(1))
        claimed = queue.claim("w", timeout=1)
        assert claimed is not None and claimed.id == job.id
        queue.ack(claimed)
    master = shared_sentinel_set.client(shared_sentinel_set.master())
    try:
        assert master.exists(RedisKeys("sentinel-find", 4).shard_for(1).stream)
    finally:
        master.close()
