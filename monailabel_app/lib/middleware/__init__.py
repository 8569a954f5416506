from .body_limit import BodySizeLimit, BodyTooLarge
from .compute_gate import ComputeGate
from .disabled_endpoints import DisabledEndpoints
from .form_fields import FormFieldCheck, FormFieldError
from .loopback import LoopbackOnly
from .origin import OriginGuard, allowed_origins
from .query_values import QueryValues
from .server_paths import HideServerPaths, hide_paths
from .slow_clients import ClientTooSlow, SlowClients
from .stack import install_middleware
from .task_requests import TaskRequestCheck
from .train_requests import TrainRequestCheck
from .temp_files import TempFileJanitor, current_request, is_own_upload, private_tempdir
from .worker_threads import WorkerThreads

__all__ = ["BodySizeLimit", "BodyTooLarge", "ClientTooSlow", "ComputeGate", "DisabledEndpoints", "FormFieldCheck",
           "FormFieldError", "HideServerPaths", "LoopbackOnly", "OriginGuard", "QueryValues", "SlowClients",
           "TaskRequestCheck", "TempFileJanitor", "TrainRequestCheck", "WorkerThreads", "allowed_origins",
           "current_request", "hide_paths", "install_middleware", "is_own_upload", "private_tempdir"]
