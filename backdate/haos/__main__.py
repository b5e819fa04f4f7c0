"""`python -m backdate.haos`: the app's entry point (see backdate/haos/app.py)."""

from backdate.haos.app import main

if __name__ == "__main__":
    main()
