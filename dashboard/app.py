"""The sim what-if dashboard: ``streamlit run dashboard/app.py``.

A multi-page app (``st.navigation``) over the pages found in ``views/`` (see ``dashkit.pages``). The Scenario
and Plan pages' widget values, the Cost page's price and the Validation page's families are kept across pages
(Streamlit forgets the state of widgets a page does not draw).
"""

from __future__ import annotations

import streamlit as st
from dashkit.pages import discover

st.set_page_config(page_title="sim: what-if dashboard", page_icon=":material/memory:", layout="wide")

# Keep the Scenario page's widgets (keys "sc_*"), the Plan page's ("pn_*"), the price and the families while other
# pages are shown (never a button's key: Streamlit refuses to set those).
KEEP = ("co_price", "va_families")
for k in [k for k in st.session_state if isinstance(k, str) and (k.startswith(("sc_", "pn_")) or k in KEEP)]:
    st.session_state[k] = st.session_state[k]

pages = [st.Page(str(p.path), title=p.title, icon=p.icon, default=i == 0) for i, p in enumerate(discover())]
st.navigation(pages).run()
