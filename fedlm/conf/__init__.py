"""The config layer: the schema (one structured config per option, registered in Hydra's ConfigStore) and every
check that needs no TensorFlow, TFF or MLflow. Light: nothing here imports them."""
