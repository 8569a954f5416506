"""The ssmis MONAI Label app's tasks: configs, infers, trainers, active learning, datastore and HTTP errors."""
