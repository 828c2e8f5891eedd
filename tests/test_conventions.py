import json

from workbench.conventions import Replica, replica_env, replicas


def test_replicas_order_puts_servers_before_workers():
    got = replicas({"worker": 2, "scheduler": 1, "server": 1})
    assert [(r.role, r.index) for r in got] == [("scheduler", 0), ("server", 0), ("worker", 0), ("worker", 1)]


def test_tensorflow_multi_worker_tf_config():
    cluster = {"worker": ["h0:1000", "h1:1001"]}
    env = replica_env("tensorflow", cluster, Replica("worker", 1))
    config = json.loads(env["TF_CONFIG"])
    assert config == {"cluster": cluster, "task": {"type": "worker", "index": 1}}
    assert env["WORKBENCH_ROLE"] == "worker" and env["WORKBENCH_REPLICA_INDEX"] == "1"


def test_tensorflow_single_replica_has_no_tf_config():
    assert "TF_CONFIG" not in replica_env("tensorflow", {"worker": ["h:1"]}, Replica("worker", 0))


def test_tensorflow_parameter_server_cluster():
    cluster = {"chief": ["c:1"], "worker": ["w:2", "w:3"], "ps": ["p:4"]}
    config = json.loads(replica_env("tensorflow", cluster, Replica("ps", 0))["TF_CONFIG"])
    assert config["task"] == {"type": "ps", "index": 0}
    assert config["cluster"]["chief"] == ["c:1"]


def test_pytorch_env_and_local_rank_per_host():
    cluster = {"worker": ["a:29500", "a:29501", "b:29502"]}
    env1 = replica_env("pytorch", cluster, Replica("worker", 1))
    env2 = replica_env("pytorch", cluster, Replica("worker", 2))
    assert (env1["MASTER_ADDR"], env1["MASTER_PORT"]) == ("a", "29500")
    assert (env1["WORLD_SIZE"], env1["RANK"], env1["LOCAL_RANK"]) == ("3", "1", "1")
    assert (env2["RANK"], env2["LOCAL_RANK"], env2["LOCAL_WORLD_SIZE"]) == ("2", "0", "1")


def test_mxnet_dmlc_variables():
    cluster = {"scheduler": ["s:9000"], "server": ["s:9001"], "worker": ["w:1", "w:2"]}
    env = replica_env("mxnet", cluster, Replica("server", 0), loopback=True)
    assert env["DMLC_ROLE"] == "server"
    assert (env["DMLC_PS_ROOT_URI"], env["DMLC_PS_ROOT_PORT"]) == ("s", "9000")
    assert (env["DMLC_NUM_SERVER"], env["DMLC_NUM_WORKER"]) == ("1", "2")
    assert env["DMLC_INTERFACE"] == "lo"
    assert "DMLC_INTERFACE" not in replica_env("mxnet", cluster, Replica("worker", 0))


def test_framework_none_only_names_the_replica():
    env = replica_env("none", {"worker": ["a:1", "a:2"]}, Replica("worker", 1))
    assert env == {"WORKBENCH_ROLE": "worker", "WORKBENCH_REPLICA_INDEX": "1"}
