"""A straightforward pandas session packer: the readable baseline that tests and benchmarks compare against."""

from __future__ import annotations

import numpy as np

from hiertcn_kernels.packing import SessionCSR, checked_log


def pack_sessions_pandas(user, item, timestamp, *, session_gap=1800, session=None) -> SessionCSR:
    """Same contract as :func:`hiertcn_kernels.pack_sessions`, written with sort_values, shift and cumsum."""
    import pandas as pd

    user, item, timestamp, session, session_gap = checked_log(user, item, timestamp, session, session_gap)
    df = pd.DataFrame({"user": user, "item": item, "timestamp": timestamp})
    if session is not None:
        df["session"] = session
    df = df.sort_values(["user", "timestamp"], kind="stable")
    # Integer shifts (fill_value keeps int64): float NaN-shifts would round ids and times above 2**53.
    new_user = changed(df["user"])
    new_session = new_user | (df["timestamp"] - df["timestamp"].shift(fill_value=0) >= session_gap)
    if session is not None:
        new_session |= changed(df["session"])
    session_index = new_session.cumsum() - 1
    item_codes, item_ids = pd.factorize(df["item"], sort=True)
    session_ptr = np.append(np.flatnonzero(new_session.to_numpy()), len(df))
    user_ptr = np.append(session_index[new_user].to_numpy(), session_index.iloc[-1] + 1)
    return SessionCSR(
        user_ptr=user_ptr.astype(np.int64),
        session_ptr=session_ptr.astype(np.int64),
        item=item_codes.astype(np.int64),
        timestamp=df["timestamp"].to_numpy(np.int64),
        user_ids=df["user"][new_user].to_numpy(np.int64),
        item_ids=np.asarray(item_ids, dtype=np.int64),
    )


def changed(column):
    """True where a value differs from the previous row (and on the first row)."""
    out = column.ne(column.shift(fill_value=0))
    out.iloc[0] = True
    return out
