"""Renew the credentials and replay, once: how every HTTP protocol answers a server that says its token
went stale.  Which answers mean that, and how a protocol renews, stay with the protocol."""
from typing import Callable, Collection

from .session import Response


def renew_and_replay(send: Callable[[], Response], renew_on: Collection[int], renew: Callable[[], None],
                     may_renew: Callable[[Response], bool] = lambda response: True) -> Response:
    """``send()``; when it is answered with a status of ``renew_on`` that ``may_renew`` accepts, that answer
    is closed, ``renew()`` runs and ``send()`` is repeated.  The repeat's answer is final, whatever it says:
    renewing again would loop against a server that refuses the new credentials too."""
    response = send()
    if response.status_code in renew_on and may_renew(response):
        response.close()
        renew()
        response = send()
    return response
