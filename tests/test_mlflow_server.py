import pytest

pytestmark = pytest.mark.server


def test_server_logs_and_reads_back_a_metric(mlflow_server_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server_uri)
    exp_id = client.create_experiment("server-smoke")
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "loss", 0.5, step=3)
    client.set_terminated(run.info.run_id)

    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.value, m.step) for m in history] == [(0.5, 3)]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    # artifacts are proxied by the server (what remote workers need)
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
