from .body_limit import BodySizeLimit, BodyTooLarge
from .form_fields import FormFieldCheck, FormFieldError
from .loopback import LoopbackOnly
from .origin import OriginGuard, allowed_origins
from .temp_files import TempFileJanitor, current_request, is_own_upload, private_tempdir
from .worker_threads import ComputeGate, WorkerThreads

__all__ = ["BodySizeLimit", "BodyTooLarge", "ComputeGate", "FormFieldCheck", "FormFieldError", "LoopbackOnly", "OriginGuard", "TempFileJanitor",
           "WorkerThreads", "allowed_origins", "current_request", "is_own_upload", "private_tempdir"]
