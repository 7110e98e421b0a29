"""The pages, scripts and styles of the web layer, installed as the package ``viewer.static``.

They stay here, at the top of the checkout; setup.cfg maps this folder to ``viewer.static`` so that
the server finds them through the installed package (``importlib.resources``) in a wheel and in an
editable install alike.
"""
